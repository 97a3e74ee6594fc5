"""Feedback parameters: the original's rules, our optional keys, and clear errors naming the key."""
import json

import pytest

from connector.errors import ParameterError
from connector.feedback import config as fc

GOOD = {"cfg-1": {"s3-bucket-name": "my-bucket", "content-type": "image/jpeg", "s3-prefix": "/a/b/",
                  "file-ext": "jpg", "sampling-strategy": {"strategy-name": "MARGIN", "threshold": 0.2},
                  "unknown-key": "ignored"}}


def parse(configs, **extra):
    values = {"FeedbackConfigurationMap": json.dumps(configs), "FeedbackSpoolDirectory": "/tmp/spool"}
    values.update(extra)
    return fc.parse_parameters(values, environ={})


def test_a_good_map_and_defaults():
    p = parse(GOOD)
    c = p.configs["cfg-1"]
    assert (c.bucket, c.content_type, c.prefix, c.file_ext) == ("my-bucket", "image/jpeg", "/a/b/", "jpg")
    assert c.strategy == fc.Strategy("MARGIN", threshold=0.2)
    assert p.request_limit == 0
    assert p.spool_max_bytes == fc.DEFAULT_SPOOL_MAX_BYTES and p.spool_full_policy == "reject-new"
    assert p.spool_max_items == 5000 and p.spool_max_age_s == 7 * 86400


@pytest.mark.parametrize("limit, value", [("", 0), ("0", 0), ("999", 999), ("7", 7)])
def test_request_limit(limit, value):
    assert parse(GOOD, RequestLimit=limit).request_limit == value


@pytest.mark.parametrize("limit", ["1000", "-1", "x", " 5", True])
def test_bad_request_limit_names_the_rule(limit):
    with pytest.raises(ParameterError, match=r"RequestLimit.*\^\$\|\^\[0-9\]\{1,3\}\$"):
        parse(GOOD, RequestLimit=limit)


@pytest.mark.parametrize("config, key", [
    ({"content-type": "image/jpeg"}, "s3-bucket-name"),
    ({"s3-bucket-name": "Upper-Case", "content-type": "image/jpeg"}, "s3-bucket-name"),
    ({"s3-bucket-name": "ab", "content-type": "image/jpeg"}, "s3-bucket-name"),
    ({"s3-bucket-name": "bucket"}, "content-type"),
    ({"s3-bucket-name": "bucket", "content-type": "x", "sampling-strategy": {"strategy-name": "BEST"}},
     "sampling-strategy.strategy-name"),
    ({"s3-bucket-name": "bucket", "content-type": "x",
      "sampling-strategy": {"strategy-name": "RANDOM_SAMPLING", "rate": 1.5}}, "sampling-strategy.rate"),
    ({"s3-bucket-name": "bucket", "content-type": "x",
      "sampling-strategy": {"strategy-name": "MARGIN", "threshold": -0.1}}, "sampling-strategy.threshold"),
    ({"s3-bucket-name": "bucket", "content-type": "x",
      "sampling-strategy": {"strategy-name": "LEAST_CONFIDENCE"}}, "sampling-strategy.threshold"),
    ({"s3-bucket-name": "bucket", "content-type": "x", "local-directory": "relative/dir"}, "local-directory"),
    ({"s3-bucket-name": "bucket", "content-type": "x", "budget": {"samples-per-minute": 0}},
     "budget.samples-per-minute"),
    ({"s3-bucket-name": "bucket", "content-type": "x", "conditions": {"classes": []}}, "conditions.classes"),
    ({"s3-bucket-name": "bucket", "content-type": "x", "conditions": {"min-score": 0.8, "max-score": 0.2}},
     "conditions.min-score"),
    ({"s3-bucket-name": "bucket", "content-type": "x", "conditions": {"cooldown-seconds": -1}},
     "conditions.cooldown-seconds"),
])
def test_a_bad_config_names_the_config_id_and_the_key(config, key):
    with pytest.raises(ParameterError) as e:
        parse({"my-config": config})
    assert "'my-config'" in str(e.value) and repr(key) in str(e.value)


def test_entropy_threshold_may_exceed_one():
    c = parse({"c1": {"s3-bucket-name": "bucket", "content-type": "x",
                      "sampling-strategy": {"strategy-name": "ENTROPY", "threshold": 2.5}}})
    assert c.configs["c1"].strategy.threshold == 2.5


@pytest.mark.parametrize("raw, match", [("{not json", "not valid JSON"), ("[]", "non-empty JSON object"),
                                        ("{}", "non-empty JSON object"),
                                        ('{"-bad": {}}', "config id '-bad'"),
                                        ('{"ok-id": 5}', "must be an object")])
def test_bad_maps(raw, match):
    with pytest.raises(ParameterError, match=match):
        fc.parse_parameters({"FeedbackConfigurationMap": raw}, environ={})


def nested_map(levels):
    """A map whose config's conditions hold a list `levels` deep in all."""
    inner = [1]
    for _ in range(levels - 4):
        inner = [inner]
    return json.dumps({"c1": {"s3-bucket-name": "bucket", "content-type": "x",
                              "conditions": {"classes": inner}}})


@pytest.mark.parametrize("raw", ["[" * 50000, '{"a": ' * 20000, nested_map(33)])
def test_a_deep_map_is_refused_in_one_line_before_it_is_parsed(raw):
    """json.loads of a deep text raises RecursionError (a traceback, not a ParameterError)."""
    with pytest.raises(ParameterError) as refused:
        fc.parse_parameters({"FeedbackConfigurationMap": raw}, environ={})
    assert str(refused.value) == ("FeedbackConfigurationMap is nested deeper than 32 levels; a real "
                                  "one has at most 4")
    # At the cap the depth is not what is refused: the rule about classes is.
    with pytest.raises(ParameterError, match="conditions.classes"):
        fc.parse_parameters({"FeedbackConfigurationMap": nested_map(32)}, environ={})


@pytest.mark.parametrize("suffix", ["/", "//", ""])
def test_directories_are_used_without_a_trailing_or_doubled_slash(tmp_path, suffix):
    """"<link>/" would make lstat and O_NOFOLLOW follow a link the checks must see."""
    doubled = str(tmp_path).replace("/", "//") + suffix
    p = parse({"local": {"local-directory": doubled, "content-type": "image/png"}},
              FeedbackSpoolDirectory=str(tmp_path / "spool") + suffix)
    assert p.configs["local"].local_directory == str(tmp_path)
    assert p.spool_directory == str(tmp_path / "spool")


def test_local_directory_needs_no_bucket(tmp_path):
    c = parse({"local": {"local-directory": str(tmp_path), "content-type": "image/png",
                         "budget": {"samples-per-hour": 10, "bytes-per-day": 1000000},
                         "conditions": {"classes": [0, 2], "min-score": 0.3, "max-score": 0.7,
                                        "cooldown-seconds": 5}}}).configs["local"]
    assert c.bucket is None and c.local_directory == str(tmp_path)
    assert c.budget == fc.Budget(per_hour=10, bytes_per_day=1000000)
    assert c.conditions == fc.Conditions(frozenset([0, 2]), 0.3, 0.7, 5.0)


@pytest.mark.parametrize("name, value", [("FeedbackSpoolMaxBytes", "0"), ("FeedbackSpoolFullPolicy", "drop"),
                                         ("FeedbackSpoolDirectory", "relative"),
                                         ("FeedbackRetryMinSeconds", "x")])
def test_bad_service_parameters(name, value):
    with pytest.raises(ParameterError, match=name):
        parse(GOOD, **{name: value})


def test_retry_max_must_not_be_below_min():
    with pytest.raises(ParameterError, match="FeedbackRetryMaxSeconds"):
        parse(GOOD, FeedbackRetryMinSeconds="5", FeedbackRetryMaxSeconds="1")


def test_load_from_file_and_environment(tmp_path):
    f = tmp_path / "feedback.yaml"
    f.write_text("FeedbackConfigurationMap:\n  c1: {s3-bucket-name: bucket-a, content-type: image/png}\n"
                 "RequestLimit: '5'\nFeedbackSpoolDirectory: " + str(tmp_path / "s") + "\n")
    p = fc.load_parameters(str(f), environ={"RequestLimit": "9"})
    assert p.request_limit == 9 and p.configs["c1"].bucket == "bucket-a"
    assert fc.load_parameters(None, environ={}) is None
    env = {"FeedbackConfigurationMap": json.dumps(GOOD), "HOME": str(tmp_path)}
    assert fc.load_parameters(None, environ=env).spool_directory.startswith(str(tmp_path))
    (tmp_path / "bad.yaml").write_text("Nonsense: 1\nFeedbackConfigurationMap: {}\n")
    with pytest.raises(ParameterError, match="unknown parameter.*Nonsense"):
        fc.load_parameters(str(tmp_path / "bad.yaml"), environ={})
