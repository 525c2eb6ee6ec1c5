"""CREAM on SmolLM2-135M-Instruct, measured: strategies avg, dynamic and none on the same prompts
and seeds (examples/smollm2.yaml at a chosen size), each run with `cream run`.

For each strategy and iteration it reports the consistency rate, pairs kept and dropped,
accuracy per task with a 95% Wilson interval, and the wall and CPU time of every stage (from
the manifests); plus the machine, its load average and the date. Output: a markdown report on
stdout (what bench/RESULTS.md records) and `<root>/report.json`.

Steps that do not depend on the strategy (the SFT, the baseline evaluation, iteration 1's sample
and scores) are identical requests in the three runs, so they run once, in the first strategy's
run, and are copied into the others, which start as soon as those exist and then run side by side
with the first (their manifests say where each step ran); every later step runs in each
strategy's own run. A run that was interrupted resumes where it stopped
(run the same command again).

    .venv/bin/python bench/bench_smollm2.py [--eval-items 400] [--prompts 24] \
        [--strategies avg dynamic none] [--root runs/bench-smollm2] [--iterations 2]

One torch thread per stage process unless CREAM_TORCH_THREADS says otherwise: on a machine whose
cores are shared, OpenMP workers spinning for a busy core made generation ~10x slower (measured).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("models/M1", "iter-0/evaluate", "iter-1/sample", "iter-1/score-m1", "iter-1/score-m0")


def spec_for(base: dict, strategy: str, args) -> dict:
    doc = copy.deepcopy(base)
    doc["metadata"]["name"] = f"smollm2-{strategy}"
    spec = doc["spec"]
    spec["iterations"] = args.iterations
    spec["consistency"]["strategy"] = strategy
    spec["data"]["prompts"] = [f"gen://arithmetic?n={args.prompts}&seed={21 + t}&ops=add,sub"
                               for t in range(args.iterations)]
    for task in spec["evaluation"]["tasks"]:
        uri, _, query = task["uri"].partition("?")
        params = dict(p.split("=", 1) for p in query.split("&"))
        params["n"] = str(args.eval_items)
        task["uri"] = uri + "?" + "&".join(f"{k}={v}" for k, v in params.items())
    return doc


def copy_shared(source: Path, target: Path) -> list[str]:
    copied = []
    for rel in SHARED:
        src, dst = source / rel, target / rel
        if (src / "manifest.json").is_file() and not (dst / "manifest.json").exists():
            shutil.copytree(src, dst, dirs_exist_ok=True)
            copied.append(rel)
    return copied


def wilson(correct: int, n: int) -> tuple[float, float]:
    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def collect(run_dir: Path) -> dict:
    """Per iteration: consistency, pairs, dropped, accuracy with intervals; per stage: seconds."""
    iterations: dict[int, dict] = {}
    stages = {}
    for manifest_path in sorted(run_dir.glob("**/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        key = str(manifest_path.parent.relative_to(run_dir))
        stages[key] = {"wall_s": manifest["timings"]["seconds"],
                       "cpu_s": manifest["timings"].get("cpu_seconds")}
        it = int(key.split("/")[0].removeprefix("iter-")) if key.startswith("iter-") else None
        if manifest["stage"] == "consistency":
            m = manifest["metrics"]
            iterations.setdefault(it, {}).update(
                consistency=m["consistency_rate"], pairs=m["pairs"], dropped=m["dropped"])
        elif manifest["stage"] == "evaluate":
            rows = [json.loads(line) for line in
                    (manifest_path.parent / "predictions.jsonl").read_text().splitlines()]
            acc = {}
            for task in sorted({r["task"] for r in rows}):
                mine = [r for r in rows if r["task"] == task]
                k = sum(r["correct"] for r in mine)
                low, high = wilson(k, len(mine))
                answered = sum(r["prediction"] is not None for r in mine)
                acc[task] = {"correct": k, "n": len(mine), "accuracy": k / len(mine),
                             "ci95": [low, high], "answered": answered}
            iterations.setdefault(it, {})["accuracy"] = acc
    return {"iterations": {str(k): v for k, v in sorted(iterations.items())}, "stages": stages}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "gpu": torch.cuda.is_available()}


def markdown(report: dict) -> str:
    lines = []
    tasks = sorted({t for r in report["runs"].values() for it in r["iterations"].values()
                    for t in it.get("accuracy", {})})
    head = ["strategy", "iteration", "consistency", "pairs", "dropped",
            *(f"{t} (95% CI)" for t in tasks)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy, run in report["runs"].items():
        for it, row in run["iterations"].items():
            cells = [strategy, it,
                     "-" if "consistency" not in row else f"{row['consistency']:.3f}",
                     str(row.get("pairs", "-")), str(row.get("dropped", "-"))]
            for t in tasks:
                a = row.get("accuracy", {}).get(t)
                cells.append("-" if a is None else
                             f"{a['accuracy']:.3f} ({a['ci95'][0]:.3f}-{a['ci95'][1]:.3f}), "
                             f"{a['correct']}/{a['n']}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Time per stage, wall / CPU seconds (CPU: the stage process's own, what it "
              "would take alone on one core; wall includes waiting for shared cores):", "",
              "| stage | " + " | ".join(report["runs"]) + " |",
              "|---|" + "---:|" * len(report["runs"])]
    keys = sorted({k for r in report["runs"].values() for k in r["stages"]})
    for key in keys:
        cells = []
        for r in report["runs"].values():
            t = r["stages"].get(key)
            cells.append("-" if t is None else f"{t['wall_s']:.0f} / {t['cpu_s'] or 0:.0f}"
                         + (" (copied)" if key in r.get("copied", ()) else ""))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "smollm2.yaml"))
    parser.add_argument("--root", default=str(ROOT / "runs" / "bench-smollm2"))
    parser.add_argument("--strategies", nargs="+", default=["avg", "dynamic", "none"])
    parser.add_argument("--eval-items", type=int, default=400)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.spec).read_text())
    env = {**os.environ, "CREAM_TORCH_THREADS": os.environ.get("CREAM_TORCH_THREADS", "1")}
    cream = str(Path(sys.executable).parent / "cream")
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "load_start": os.getloadavg(), "args": vars(args),
              "command": " ".join(sys.argv), "runs": {}}
    runs = {}  # strategy -> (process, run_dir, copied, started)

    def launch(strategy: str, copied: list[str]) -> None:
        run_dir = root / strategy
        spec_path = root / f"smollm2-{strategy}.yaml"
        spec_path.write_text(yaml.safe_dump(spec_for(base, strategy, args), sort_keys=False))
        print(f"== {strategy}: cream run {spec_path} --out {run_dir}"
              + (f" (copied: {', '.join(copied)})" if copied else ""), file=sys.stderr, flush=True)
        proc = subprocess.Popen([cream, "run", str(spec_path), "--out", str(run_dir)], env=env)
        runs[strategy] = (proc, run_dir, copied, time.monotonic())

    # The first strategy's run makes the shared steps; the others start as soon as those exist
    # (so they run side by side, one torch thread each, on a machine with more than one core).
    first, *rest = args.strategies
    launch(first, [])
    first_dir = root / first
    while rest and not all((first_dir / rel / "manifest.json").is_file() for rel in SHARED):
        if runs[first][0].poll() is not None:
            print(f"cream run failed for {first} before the shared steps were done "
                  f"(exit {runs[first][0].returncode})", file=sys.stderr)
            return runs[first][0].returncode or 1
        time.sleep(10)
    for strategy in rest:
        (root / strategy).mkdir(parents=True, exist_ok=True)
        launch(strategy, copy_shared(first_dir, root / strategy))
    failed = 0
    for strategy, (proc, run_dir, copied, started) in runs.items():
        if proc.wait() != 0:
            print(f"cream run failed for {strategy} (exit {proc.returncode})", file=sys.stderr)
            failed = failed or proc.returncode
            continue
        report["runs"][strategy] = {**collect(run_dir), "copied": copied,
                                    "wall_s": time.monotonic() - started,
                                    "load_after": os.getloadavg()}
        (root / "report.json").write_text(json.dumps(report, indent=2))
    if failed:
        return failed
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
