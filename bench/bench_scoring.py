"""Scoring throughput (s_M over response tokens) by batch size, on the CPU path.

The score stage runs once per model per iteration over every (prompt, response); batching with
length-sorted padding is what makes it affordable. This scores the same 128 (prompt, response)
pairs of the tiny model's sampling at batch sizes 1, 4, 16 and 64 and reports the median time of
each relative to batch size 1 (same run, same machine: ratios, not absolute times). It also checks
that every batch size gives the same scores, to float tolerance.

    .venv/bin/python bench/bench_scoring.py [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")

from cream_stages.logprobs import score_encodings  # noqa: E402
from cream_stages.models import load_model  # noqa: E402
from cream_stages.tokenization import encode_pair  # noqa: E402

TEXT = ("the model answers every question by thinking step by step and then it writes the "
        "final answer after the word answer so that a reader can check it")
WORDS = TEXT.split()


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choices(WORDS, k=rng.randint(6, 20))),
             " ".join(rng.choices(WORDS, k=rng.randint(4, 40)))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model, tokenizer, _ = load_model("builtin://tiny-llama")
    encodings = [encode_pair(tokenizer, p, r, 160) for p, r in _pairs(args.pairs)]
    pad = tokenizer.pad_token_id
    reference = score_encodings(model, encodings, pad, batch_size=1)
    times: dict[int, float] = {}
    for batch in (1, 4, 16, 64):
        samples = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            scores = score_encodings(model, encodings, pad, batch_size=batch)
            samples.append(time.perf_counter() - t0)
        worst = max(abs(a - b) for a, b in zip(scores, reference, strict=True))
        assert worst < 1e-3, f"batch {batch} changed a score by {worst}"
        times[batch] = statistics.median(samples)

    tokens = sum(len(e.input_ids) for e in encodings)
    record = {
        "benchmark": "score_encodings by batch size (tiny-llama, CPU, 1 torch thread)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "pairs": args.pairs, "tokens": tokens, "repeats": args.repeats,
        "median_s": {b: round(t, 4) for b, t in times.items()},
        "speedup_vs_batch_1": {b: round(times[1] / t, 2) for b, t in times.items()},
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print(f"{args.pairs} pairs, {tokens} tokens, median of {args.repeats}")
    print(f"{'batch':>5}  {'median s':>9}  {'speedup':>7}")
    for b, t in times.items():
        print(f"{b:>5}  {t:>9.4f}  {times[1] / t:>7.2f}")


if __name__ == "__main__":
    main()
