"""Detection-aware conditions, cooldown and budgets of a feedback config (fake clock)."""
from connector.feedback import gate
from connector.feedback.config import Budget, Conditions, FeedbackConfig, Strategy


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(conditions=Conditions(), budget=Budget(), strategy=None):
    clock = Clock()
    config = FeedbackConfig("c1", "image/jpeg", bucket="bucket", strategy=strategy,
                            conditions=conditions, budget=budget)
    return gate.Gate(config, clock=clock, rng=lambda: 0.5), clock


def doc(*rows):
    return {"prediction": [[c, s, 0, 0, 1, 1] for c, s in rows]}


def test_classes_and_score_band():
    g, _ = make(Conditions(classes=frozenset([2]), min_score=0.3, max_score=0.7))
    assert g.decide(doc((2, 0.5)), 10) == gate.KEPT
    assert g.decide(doc((2, 0.3)), 10) == gate.KEPT  # the band is inclusive
    assert g.decide(doc((1, 0.5)), 10) == gate.DROPPED_BY_CONDITION  # other class
    assert g.decide(doc((2, 0.9)), 10) == gate.DROPPED_BY_CONDITION  # above the band
    assert g.decide(doc((2, 0.9), (2, 0.4)), 10) == gate.KEPT  # one matching box is enough
    assert g.decide(doc(), 10) == gate.DROPPED_BY_CONDITION  # nothing detected


def test_conditions_on_probability_lists_use_the_top_class():
    g, _ = make(Conditions(classes=frozenset([1])))
    assert g.decide([0.2, 0.8], 1) == gate.KEPT
    assert g.decide([0.8, 0.2], 1) == gate.DROPPED_BY_CONDITION


def test_strategy_runs_after_conditions():
    g, _ = make(Conditions(classes=frozenset([0])), strategy=Strategy("LEAST_CONFIDENCE", threshold=0.5))
    assert g.decide(doc((0, 0.9)), 1) == gate.DROPPED_BY_STRATEGY
    assert g.decide(doc((0, 0.4)), 1) == gate.KEPT
    assert g.decide(doc((3, 0.4)), 1) == gate.DROPPED_BY_CONDITION


def test_cooldown_counts_from_the_last_kept_sample():
    g, clock = make(Conditions(cooldown_s=10))
    assert g.decide(doc(), 1) == gate.KEPT
    clock.now += 9.9
    assert g.decide(doc(), 1) == gate.DROPPED_BY_COOLDOWN
    clock.now += 0.1
    assert g.decide(doc(), 1) == gate.KEPT


def test_sample_budgets_are_sliding_windows():
    g, clock = make(budget=Budget(per_minute=2, per_hour=3))
    assert [g.decide(doc(), 1) for _ in range(3)] == [gate.KEPT, gate.KEPT, gate.DROPPED_BY_BUDGET]
    clock.now += 60
    assert g.decide(doc(), 1) == gate.KEPT  # a new minute, third of the hour
    clock.now += 60
    assert g.decide(doc(), 1) == gate.DROPPED_BY_BUDGET  # the hour's 3 are used
    clock.now += 3600
    assert g.decide(doc(), 1) == gate.KEPT


def test_byte_budget_per_day():
    g, clock = make(budget=Budget(bytes_per_day=100))
    assert g.decide(doc(), 60) == gate.KEPT
    assert g.decide(doc(), 41) == gate.DROPPED_BY_BUDGET
    assert g.decide(doc(), 40) == gate.KEPT
    clock.now += 86400
    assert g.decide(doc(), 100) == gate.KEPT


def test_dropped_samples_do_not_use_the_budget():
    g, _ = make(Conditions(classes=frozenset([0])), budget=Budget(per_day=1))
    assert g.decide(doc((1, 0.5)), 1) == gate.DROPPED_BY_CONDITION
    assert g.decide(doc((0, 0.5)), 1) == gate.KEPT
