"""The scale benchmark's arithmetic (bench/scale_measure.py): what its table reports."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from scale_measure import (  # noqa: E402
    JobTimes,
    audit_summary,
    histogram_increase,
    histogram_quantile,
    latencies,
    parse_metrics,
    percentile,
    request_codes,
)


def test_percentile_interpolates():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == 99.0


def test_latencies_from_the_last_prerequisite():
    after = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    jobs = [JobTimes("r", "a", added=10.0, complete=12.0),
            JobTimes("r", "b", added=12.5, complete=14.0),
            JobTimes("r", "c", added=12.25, complete=15.0),
            JobTimes("r", "d", added=15.75)]
    lat = latencies({"r": 9.5}, jobs, after)
    assert lat.apply_to_first_job == [0.5]
    assert sorted(lat.done_to_next_job) == [0.25, 0.5, 0.75]  # d waits for c, the later one
    assert lat.early == []
    early = latencies({}, [JobTimes("r", "b", added=1.0)], after)
    assert early.early == [("r", "b")] and early.apply_to_first_job == []


def test_histogram_quantile_as_promql():
    text = "\n".join([
        "# HELP x_seconds a histogram",
        'x_seconds_bucket{le="0.1"} 50.0',
        'x_seconds_bucket{le="0.5"} 90.0',
        'x_seconds_bucket{le="1.0"} 100.0',
        'x_seconds_bucket{le="+Inf"} 100.0',
        "x_seconds_count 100.0",
    ])
    samples = parse_metrics(text)
    assert histogram_quantile(samples, "x_seconds", 0.5) == pytest.approx(0.1)
    assert histogram_quantile(samples, "x_seconds", 0.7) == pytest.approx(0.3)
    assert histogram_quantile(samples, "x_seconds", 0.99) == pytest.approx(0.95)
    assert histogram_quantile(samples, "y_seconds", 0.5) is None


def test_request_codes_are_an_increase():
    before = parse_metrics('apiserver_request_total{code="200",verb="GET"} 10\n'
                           'apiserver_request_total{code="429",verb="GET"} 1')
    after = parse_metrics('apiserver_request_total{code="200",verb="GET"} 25\n'
                          'apiserver_request_total{code="200",verb="LIST"} 5\n'
                          'apiserver_request_total{code="429",verb="GET"} 1')
    assert request_codes(before, after) == {"200": 20}


def test_audit_summary_counts_one_users_completed_requests():
    def line(user, verb, resource, code, stage="ResponseComplete", sub=None, message=None):
        ref = {"resource": resource, **({"subresource": sub} if sub else {})}
        status = {"code": code, **({"message": message} if message else {})}
        return json.dumps({"stage": stage, "user": {"username": user}, "verb": verb,
                           "objectRef": ref, "responseStatus": status})
    lines = [line("op", "create", "jobs", 201),
             line("op", "patch", "creamruns", 409, sub="status", message="conflict"),
             line("op", "watch", "jobs", 200, stage="ResponseStarted"),
             line("admin", "create", "creamruns", 201), ""]
    s = audit_summary(lines, "op")
    assert s.requests == 2
    assert s.by_verb_resource == {"create jobs": 1, "patch creamruns/status": 1}
    assert s.by_code == {201: 1, 409: 1}
    assert s.failures == {(409, "patch creamruns/status", "conflict"): 1}


def test_histogram_increase_sums_label_sets_and_leaves_out_watches():
    def scrape(get_fast, list_slow, watch):
        return parse_metrics("\n".join([
            f'h_bucket{{verb="GET",le="0.1"}} {get_fast}',
            f'h_bucket{{verb="GET",le="+Inf"}} {get_fast}',
            'h_bucket{verb="LIST",le="0.1"} 0',
            f'h_bucket{{verb="LIST",le="+Inf"}} {list_slow}',
            'h_bucket{verb="WATCH",le="0.1"} 0',
            f'h_bucket{{verb="WATCH",le="+Inf"}} {watch}',
        ]))
    inc = histogram_increase(scrape(5, 1, 1), scrape(8, 2, 9), "h", exclude_verbs=("WATCH",))
    assert sorted((labels["le"], v) for _, labels, v in inc) == [("+Inf", 4), ("0.1", 3)]
    assert histogram_quantile(inc, "h", 0.5) == pytest.approx(0.1 * 2 / 3)
