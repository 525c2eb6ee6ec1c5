"""Chaos, long version: the short chaos test (tests/cluster/test_chaos.py) over several seeds, each
a fresh test cluster, an undisturbed reference run and a disturbed run with the operator killed
at seeded random moments (every 3 to 15 s), a stage Pod killed, S3 stopped for 40 s, and
kube-apiserver and etcd restarted. Sums the counts each writes (CREAM_CHAOS_REPORT) into one
table: kills, outages, runs, duplicate Jobs, artifact mismatches.

    .venv/bin/python bench/bench_chaos.py --seeds 1 2 3 4 --json build/bench-chaos.json

Not part of `make test`: each seed takes a few minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/cluster/test_chaos.py"
COUNTS = ("operator_kills", "pod_kills", "s3_outages", "s3_down_seconds", "apiserver_restarts",
          "etcd_restarts", "duplicates", "mismatches", "compared")


def one_seed(seed: int, out: Path) -> dict:
    env = {**os.environ, "CREAM_CHAOS_SEED": str(seed), "CREAM_CHAOS_REPORT": str(out)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    report = json.loads(out.read_text()) if out.exists() else {"seed": seed, "phase": "none"}
    report["passed"] = proc.returncode == 0
    report["wall_s"] = round(time.monotonic() - t0, 1)
    if not report["passed"]:
        report["tail"] = proc.stdout[-3000:]
    return report


def table(reports: list[dict]) -> str:
    lines = ["| seed | run | operator kills | Pod kills | S3 outages (s) | apiserver+etcd restarts "
             "| Jobs | duplicates | artifacts compared | mismatches | wall |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(
            f"| {r['seed']} | {r.get('phase')} | {r.get('operator_kills')} | {r.get('pod_kills')} "
            f"| {r.get('s3_outages')} ({r.get('s3_down_seconds')}) "
            f"| {r.get('apiserver_restarts')} | {r.get('jobs')} | {r.get('duplicates')} "
            f"| {r.get('compared')} | {r.get('mismatches')} | {r['wall_s']:.0f} s |")
    total = {k: sum(r.get(k) or 0 for r in reports) for k in COUNTS}
    lines.append(f"| all | {sum(r.get('phase') == 'Succeeded' for r in reports)}/{len(reports)} "
                 f"Succeeded | {total['operator_kills']} | {total['pod_kills']} "
                 f"| {total['s3_outages']} ({total['s3_down_seconds']:g}) "
                 f"| {total['apiserver_restarts']} | {sum(r.get('jobs') or 0 for r in reports)} "
                 f"| {total['duplicates']} | {total['compared']} | {total['mismatches']} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--json", type=Path, help="write every seed's counts here")
    args = parser.parse_args()
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            reports.append(one_seed(seed, Path(tmp) / f"chaos-{seed}.json"))
            print(f"seed {seed}: {json.dumps({k: reports[-1].get(k) for k in COUNTS})}",
                  flush=True)
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(table(reports))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(reports, indent=1))
    if not all(r["passed"] for r in reports):
        sys.exit(1)


if __name__ == "__main__":
    main()
