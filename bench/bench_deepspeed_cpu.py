"""Training throughput on the CPU: one process against two under DeepSpeed ZeRO-2 and ZeRO-3.

The point is the mechanics of the distributed path (torchrun, gloo, ZeRO's partitioning and
collectives), not CPU speed: tokens per second of the sft loop on the tiny model, for
- the `transformers` backend in one process (the baseline),
- DeepSpeed ZeRO-2 and ZeRO-3 in one process (a world of one), and in two under torchrun.
Every configuration trains on the same 64 examples with the same effective batch (micro-batches
of 8; one process accumulates two, two ranks one each) and one torch thread per process, so two
processes could at best double the baseline. Each configuration is one launch: a warm-up epoch,
then REPEATS timed passes of EPOCHS epochs; the median pass counts (tokens of every rank's
micro-batches / wall time of the slowest rank).

    .venv/bin/python bench/bench_deepspeed_cpu.py            # prints a table; --json for raw
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

EXAMPLES, BATCH, MAX_LENGTH = 64, 8, 160
EPOCHS, REPEATS = 3, 5
CONFIGS = [  # name, processes, backend, zero stage
    ("transformers, 1 process", 1, "transformers", 2),
    ("DeepSpeed ZeRO-2, 1 process", 1, "deepspeed", 2),
    ("DeepSpeed ZeRO-2, 2 processes", 2, "deepspeed", 2),
    ("DeepSpeed ZeRO-3, 1 process", 1, "deepspeed", 3),
    ("DeepSpeed ZeRO-3, 2 processes", 2, "deepspeed", 3),
]


def worker(backend: str, zero: int) -> None:
    """One configuration, on this rank; rank 0 prints its result as one JSON line."""
    import torch
    import torch.distributed as dist

    from cream_stages.contract import TrainParams
    from cream_stages.data import load_conversations
    from cream_stages.models import load_tokenizer, resolve_model_uri
    from cream_stages.sft import make_loss_fn
    from cream_stages.tokenization import encode_conversation
    from cream_stages.train_loop import epoch_batches, fit, set_seed
    from cream_stages.training import open_trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    path = resolve_model_uri("builtin://tiny-llama")
    tokenizer = load_tokenizer(path)
    examples = [encode_conversation(tokenizer, c, MAX_LENGTH)
                for c in load_conversations("builtin://data/sft.jsonl")[:EXAMPLES]]

    def params(epochs: int) -> TrainParams:
        return TrainParams(epochs=epochs, learning_rate=1e-3, batch_size=BATCH,
                           gradient_accumulation=2 // world, max_length=MAX_LENGTH,
                           backend=backend, zero_stage=zero)

    set_seed(0)
    trainer = open_trainer(path, params(1))
    loss_fn = make_loss_fn(tokenizer.pad_token_id)
    fit(trainer, examples, loss_fn, params(1), 0, "warm-up")
    rates = []
    for rep in range(REPEATS):
        seed = rep + 1
        tokens = sum(len(examples[i].input_ids) for epoch in range(EPOCHS)
                     for mb in epoch_batches(EXAMPLES, BATCH, seed, epoch, world, trainer.rank)
                     for i in mb)
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        fit(trainer, examples, loss_fn, params(EPOCHS), seed, "timed")
        elapsed = time.perf_counter() - t0
        if world > 1:
            both = torch.tensor([float(tokens), elapsed])
            dist.all_reduce(both[:1], op=dist.ReduceOp.SUM)
            dist.all_reduce(both[1:], op=dist.ReduceOp.MAX)
            tokens, elapsed = int(both[0]), float(both[1])
        rates.append(tokens / elapsed)
    if trainer.rank == 0:
        print("RESULT " + json.dumps({"tokens_per_s": rates}), flush=True)


def launch(processes: int, backend: str, zero: int) -> list[float]:
    script = os.path.abspath(__file__)
    args = ["--worker", f"--backend={backend}", f"--zero={zero}"]
    if processes == 1:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", script, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the raw record")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="transformers", help=argparse.SUPPRESS)
    parser.add_argument("--zero", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.backend, args.zero)
        return
    load_before = os.getloadavg()
    results = {}
    for name, processes, backend, zero in CONFIGS:
        rates = launch(processes, backend, zero)
        results[name] = {"processes": processes, "median": statistics.median(rates),
                         "all": rates}
        print(f"{name}: {statistics.median(rates):.0f} tokens/s", file=sys.stderr, flush=True)
    record = {"machine": platform.platform(), "cpus": os.cpu_count(),
              "load_before": load_before, "load_after": os.getloadavg(), "results": results}
    if args.json:
        print(json.dumps(record, indent=1))
        return
    base = results[CONFIGS[0][0]]["median"]
    print(f"{'configuration':32} {'tokens/s':>9} {'x baseline':>11} {'2 vs 1 process':>15}")
    for name, processes, _, _ in CONFIGS:
        median = results[name]["median"]
        pair = ""
        if processes == 2:
            one = results[name.replace("2 processes", "1 process")]["median"]
            pair = f"{median / one:.2f}"
        print(f"{name:32} {median:9.0f} {median / base:11.2f} {pair:>15}")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
