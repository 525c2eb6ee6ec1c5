"""How the reconcile decision's cost grows with the length of a run.

decide() runs on every event of a CreamRun and of each of its Jobs, so its cost matters for an
operator with many long runs. It re-plans the whole run each time (pure, no cache): this measures
the median time of one decision mid-run for T = 1, 5, 10, 20 iterations, relative to T = 1.

    .venv/bin/python bench/bench_reconcile.py          # prints a table; --json for the raw record
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import yaml

from cream_operator.config import OperatorConfig
from cream_operator.reconcile import JobView, decide

ROOT = Path(__file__).resolve().parents[1]
CONFIG = OperatorConfig(storage_uri="s3://bucket/runs")
NOW = "2026-11-23T10:00:00Z"


def _run_halfway(iterations: int) -> tuple[dict, list[JobView]]:
    """A run whose first half of stages is done, with the next stages' Jobs active."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())
    doc["spec"]["iterations"] = iterations
    doc["spec"]["data"]["prompts"] = doc["spec"]["data"]["prompts"][:1]
    run = {"metadata": {"name": "bench", "namespace": "ml", "uid": "u", "generation": 1},
           "spec": doc["spec"], "status": {}}
    jobs: dict[str, JobView] = {}
    while True:
        d = decide(run, list(jobs.values()), NOW, CONFIG)
        run["status"] = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        for step in d.create:
            jobs[step.key] = JobView(name=step.key, key=step.key, state="active")
        done = sum(1 for s in d.status.steps if s.phase == "Succeeded")
        if done * 2 >= len(d.status.steps) and done > iterations * 3:
            return copy.deepcopy(run), list(jobs.values())
        for key, job in list(jobs.items()):
            if job.state == "active":
                jobs[key] = JobView(name=key, key=key, state="succeeded", completion_time=NOW)


def measure(iterations: int, repeats: int) -> float:
    run, jobs = _run_halfway(iterations)
    assert decide(run, jobs, NOW, CONFIG).status.phase == "Running"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decide(run, jobs, NOW, CONFIG)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {t: measure(t, args.repeats) for t in (1, 5, 10, 20)}
    record = {
        "benchmark": "reconcile decide() mid-run",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                   f"Python {platform.python_version()}",
        "repeats": args.repeats,
        "median_ms": {t: round(v * 1e3, 3) for t, v in rows.items()},
        "ratio_to_T1": {t: round(v / rows[1], 2) for t, v in rows.items()},
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print(f"{'T':>3}  {'median ms':>10}  {'x T=1':>6}")
    for t, v in rows.items():
        print(f"{t:>3}  {v * 1e3:>10.3f}  {v / rows[1]:>6.2f}")


if __name__ == "__main__":
    main()
