"""The figures of the scale benchmark (bench_scale.py), computed from what it recorded.

Pure functions, no cluster: percentiles, the two latencies from watch-event arrival times, a
Prometheus histogram's quantiles and counters from /metrics text, and the operator's API requests
from the API server's audit log.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between order statistics."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class JobTimes:
    run: str
    step: str
    added: float  # when the watch first showed the Job
    complete: float | None = None  # when it first showed the Job's Complete condition


@dataclass
class Latencies:
    apply_to_first_job: list[float] = field(default_factory=list)
    done_to_next_job: list[float] = field(default_factory=list)
    # (run, step) of Jobs that started before what they wait for was seen complete (should be 0)
    early: list[tuple[str, str]] = field(default_factory=list)


def latencies(run_added: Mapping[str, float], jobs: Iterable[JobTimes],
              after: Mapping[str, tuple[str, ...]]) -> Latencies:
    """apply-to-first-Job: a run's first Job minus the run's appearance. stage-done-to-next-Job:
    each later Job minus the moment the last step it waits for (`after`: step -> steps) was seen
    complete. All times come from the same watcher, so its delivery lag mostly cancels."""
    out = Latencies()
    by_run: dict[str, dict[str, JobTimes]] = {}
    for job in jobs:
        by_run.setdefault(job.run, {})[job.step] = job
    for run, steps in by_run.items():
        if run in run_added:
            out.apply_to_first_job.append(min(j.added for j in steps.values()) - run_added[run])
        for step, job in steps.items():
            waits = after.get(step, ())
            if not waits:
                continue
            done = [steps[w].complete for w in waits if w in steps]
            if len(done) != len(waits) or any(t is None for t in done):
                out.early.append((run, step))
                continue
            out.done_to_next_job.append(job.added - max(done))
    return out


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> (name, labels, value) samples."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            samples.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")),
                            float(m.group(3))))
    return samples


def histogram_quantile(samples, name: str, q: float) -> float | None:
    """As PromQL's histogram_quantile over one histogram's `<name>_bucket` samples (q in 0..1):
    linear interpolation inside the bucket the rank falls in."""
    buckets = sorted((float(labels["le"]), value) for n, labels, value in samples
                     if n == f"{name}_bucket")
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            width = count - prev_count
            return bound if width == 0 else prev_bound + (bound - prev_bound) * (
                (rank - prev_count) / width)
        prev_bound, prev_count = bound, count
    return prev_bound


def histogram_increase(before, after, name: str, exclude_verbs: tuple[str, ...] = ()) -> list:
    """One histogram's increase between two scrapes, summed over its label sets (e.g. every
    resource and verb of apiserver_request_duration_seconds but WATCH), as `<name>_bucket`
    samples for histogram_quantile."""
    def buckets(samples) -> Counter:
        c: Counter = Counter()
        for n, labels, value in samples:
            if n == f"{name}_bucket" and labels.get("verb") not in exclude_verbs:
                c[labels["le"]] += value
        return c
    inc = buckets(after)
    inc.subtract(buckets(before))
    return [(f"{name}_bucket", {"le": le}, value) for le, value in inc.items()]


def counter_sum(samples, name: str, **match: str | re.Pattern) -> float:
    total = 0.0
    for n, labels, value in samples:
        if n != name:
            continue
        if all(re.fullmatch(v, labels.get(k, "")) if isinstance(v, re.Pattern)
               else labels.get(k) == v for k, v in match.items()):
            total += value
    return total


def request_codes(before, after) -> Counter:
    """apiserver_request_total's increase between two scrapes, by response code."""
    def by_code(samples) -> Counter:
        c: Counter = Counter()
        for n, labels, value in samples:
            if n == "apiserver_request_total":
                c[labels.get("code", "")] += value
        return c
    return by_code(after) - by_code(before)


@dataclass
class AuditSummary:
    requests: int = 0
    by_verb_resource: Counter = field(default_factory=Counter)
    by_code: Counter = field(default_factory=Counter)
    # (code, "verb resource", the API server's message): what a refused request was refused for
    failures: Counter = field(default_factory=Counter)


def audit_summary(lines: Iterable[str], user: str) -> AuditSummary:
    """The requests of one user in an audit log (JSON lines, stage ResponseComplete)."""
    out = AuditSummary()
    for line in lines:
        if not line.strip():
            continue
        ev = json.loads(line)
        if ev.get("stage") != "ResponseComplete" or ev.get("user", {}).get("username") != user:
            continue
        ref = ev.get("objectRef") or {}
        resource = ref.get("resource", "") + (f"/{ref['subresource']}"
                                              if ref.get("subresource") else "")
        out.requests += 1
        out.by_verb_resource[f"{ev.get('verb')} {resource}"] += 1
        status = ev.get("responseStatus") or {}
        code = status.get("code", 0)
        out.by_code[code] += 1
        if code >= 400:
            out.failures[(code, f"{ev.get('verb')} {resource}", status.get("message", ""))] += 1
    return out
