"""Sampling exactly as SPEC section 6: strict comparisons, normalisation, detection definitions."""
import math

import pytest

from connector.feedback import sampling
from connector.feedback.config import Strategy

LC, MARGIN, ENTROPY = "LEAST_CONFIDENCE", "MARGIN", "ENTROPY"


def keep(name, threshold, prediction):
    return sampling.keep(Strategy(name, threshold=threshold), prediction)


def doc(*scores):
    return {"prediction": [[i, s, 0.1, 0.1, 0.5, 0.5] for i, s in enumerate(scores)]}


def test_no_strategy_keeps_everything():
    assert sampling.keep(None, [0.2, 0.8])
    assert sampling.keep(None, {"prediction": []})


@pytest.mark.parametrize("draw, rate, kept", [(0.29, 0.3, True), (0.3, 0.3, False), (0.0, 0.0, False),
                                              (0.999, 1.0, True)])
def test_random_is_strictly_below_rate(draw, rate, kept):
    assert sampling.keep(Strategy("RANDOM_SAMPLING", rate=rate), doc(), rng=lambda: draw) is kept


def test_random_rate_over_many_draws():
    import random
    rng = random.Random(7)
    kept = sum(sampling.keep(Strategy("RANDOM_SAMPLING", rate=0.25), [1.0], rng=rng.random)
               for _ in range(4000))
    assert 850 < kept < 1150


# -- lists of probabilities ---------------------------------------------------------------------

def test_least_confidence_on_lists_is_strict():
    assert keep(LC, 0.61, [0.6, 0.3, 0.1])
    assert not keep(LC, 0.6, [0.6, 0.3, 0.1])  # max(p) == t is not below t


def test_margin_on_lists_is_strict():
    assert keep(MARGIN, 0.26, [0.5, 0.25, 0.25])
    assert not keep(MARGIN, 0.25, [0.5, 0.25, 0.25])
    assert not keep(MARGIN, 0.5, [1.0])  # a single class: margin 1


def test_entropy_on_lists_is_strict():
    p = [0.5, 0.5]
    h = math.log(2)
    assert keep(ENTROPY, h - 1e-9, p)
    assert not keep(ENTROPY, h, p)
    assert not keep(ENTROPY, 0.0, [1.0, 0.0])  # 0 ln 0 counts as 0: entropy 0 is not above 0


def test_lists_are_normalised_when_the_sum_is_off():
    # [2, 1, 1] is [0.5, 0.25, 0.25]: max 0.5
    assert keep(LC, 0.51, [2, 1, 1]) and not keep(LC, 0.5, [2, 1, 1])
    assert keep(MARGIN, 0.26, [2, 1, 1]) and not keep(MARGIN, 0.25, [2, 1, 1])


def test_normalisation_tolerance_is_1e_8():
    assert sampling.probabilities([0.5, 0.5 + 5e-9]) == [0.5, 0.5 + 5e-9]  # within: untouched
    scaled = sampling.probabilities([0.5, 0.5 + 1e-6])
    assert abs(sum(scaled) - 1.0) < 1e-12


@pytest.mark.parametrize("bad, reason", [([], "empty"), ([0.5, "x"], "finite numbers"),
                                         ([0.5, float("nan")], "finite numbers"),
                                         ([True, 0.5], "finite numbers"), ([-0.1, 1.1], "negative"),
                                         ([0, 0], "sum to 0")])
def test_bad_lists_are_refused_with_the_reason(bad, reason):
    with pytest.raises(ValueError, match=reason):
        keep(LC, 0.5, bad)


# -- detection documents ------------------------------------------------------------------------

def test_least_confidence_on_detections():
    assert keep(LC, 0.9, doc(0.8, 0.85))
    assert not keep(LC, 0.85, doc(0.8, 0.85))  # max(s) == t
    assert keep(LC, 0.5, doc())  # no boxes: sampled


def test_margin_on_detections_uses_the_least_certain_box():
    # |2s - 1|: 0.9 -> 0.8, 0.6 -> 0.2; min 0.2
    assert keep(MARGIN, 0.21, doc(0.9, 0.6))
    assert not keep(MARGIN, 0.2 + 1e-12, doc(0.9, 0.9))
    assert not keep(MARGIN, 0.5, doc(0.75))  # |2*0.75 - 1| == 0.5 exactly: not below
    assert not keep(MARGIN, 1.0, doc())  # no boxes: not sampled


def test_entropy_on_detections_uses_the_most_uncertain_box():
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert keep(ENTROPY, h - 1e-9, doc(0.99, 0.25))
    assert not keep(ENTROPY, h, doc(0.99, 0.25))
    assert not keep(ENTROPY, math.log(2), doc(0.5))  # at most ln 2, and not above it
    assert not keep(ENTROPY, 0.0, doc(1.0, 0.0))  # certain boxes: entropy 0
    assert not keep(ENTROPY, 0.0, doc())  # no boxes: not sampled


@pytest.mark.parametrize("bad", [{}, {"prediction": "x"}, {"prediction": [[0]]},
                                 {"prediction": [[0, 1.5, 0, 0, 1, 1]]},
                                 {"prediction": [["cat", 0.5, 0, 0, 1, 1]]}, {"other": []}])
def test_bad_detection_documents_are_refused(bad):
    with pytest.raises(ValueError, match="ModelPrediction"):
        keep(LC, 0.5, bad)


def test_the_connectors_own_document_is_read():
    from connector.model import postprocess
    text = postprocess.render(postprocess.prediction_document([[1, 0.7, 0.1, 0.2, 0.3, 0.4]]))
    import json
    assert sampling.read_prediction(json.loads(text)) == ("detections", [(1, 0.7)])
