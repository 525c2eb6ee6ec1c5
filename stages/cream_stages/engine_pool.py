"""Data parallel inference: one engine per device, each on whole batches, results in input order.

Why batches and not prompts: what an engine computes for a sequence may depend on its batch
(left padding in generation, the padded shapes in scoring, the sampling generator seeded once per
batch), so the pool forms the very batches one engine would form, from the whole input, and hands
out whole batches. Which engine ran a batch then changes nothing: the outputs of 1, 2 or 8 engines
are identical (tests/stages/test_data_parallel.py), and `data_parallel` is a speed setting only.
Score batches are length-sorted, or, for an engine that computes a prompt once under all its
responses (`scores_by_prompt`: the transformers tree scorer), whole prompts (`prompt_batches`).

Balance: batches go out longest-first (by a token estimate: prompt plus n x max_tokens when
generating, sequence length when scoring) to whichever engine is free, so the stage ends with
the slowest batch, not the slowest fixed shard. Each engine's busy time, batches and tokens are
reported (`shard_metrics`) and land in the stage's manifest, so imbalance is visible.

Engine 0 is the stage's own process (lm-evaluation-harness tasks run on it alone); the others are
spawned processes, each opening the same backend, model and seed on its own device (GPU i when
the stage has GPUs, else CPU threads split between them). A worker that fails fails the stage:
its traceback is raised here, before anything is written.

Tensor parallel: a model too large for one device runs as vLLM engines of `tensor_parallel`
GPUs each (`device_groups`: engine i gets GPUs i*tp .. i*tp+tp-1 as its CUDA_VISIBLE_DEVICES), so
a Pod's GPUs make gpus / tp data parallel engines. Several nodes (an Indexed Job) each run such a
pool on a share of the batches: node_shards.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .contract import InferenceBackend
from .inference import open_engine
from .node_shards import NodeShard, node_index


def batches(costs: Sequence[int], batch_size: int, order: Sequence[int] | None = None) \
        -> list[list[int]]:
    """Indices cut into consecutive batches of `batch_size`, in `order` (default input order)."""
    idx = list(range(len(costs))) if order is None else list(order)
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


def even_chunks(costs: Sequence[int], chunks: int) -> list[list[int]]:
    """Consecutive runs of indices of about equal total cost (for engines that batch by
    themselves, such as vLLM: a few large chunks per engine, not many small batches)."""
    total = sum(costs) or 1
    out: list[list[int]] = [[]]
    acc = 0
    for i, cost in enumerate(costs):
        if out[-1] and acc >= total * len(out) / chunks:
            out.append([])
        out[-1].append(i)
        acc += cost
    return [c for c in out if c]


def prompt_batches(prompts: Sequence, costs: Sequence[int], batch_size: int) -> list[list[int]]:
    """Score batches that keep each prompt's responses together, for a scorer that computes a
    prompt once under all its responses (packed_logprobs' tree): whole groups of equal `prompts`
    keys, costliest group first, filled up to `batch_size` sequences (a larger group alone)."""
    groups: dict = {}
    for i, key in enumerate(prompts):
        groups.setdefault(key, []).append(i)
    ordered = sorted(groups.values(), key=lambda g: -sum(costs[i] for i in g))  # stable
    out: list[list[int]] = []
    for group in ordered:
        if out and len(out[-1]) + len(group) <= batch_size:
            out[-1].extend(group)
        else:
            out.append(list(group))
    return out


def longest_first(work: Sequence[list[int]], costs: Sequence[int]) -> list[int]:
    """The order batches are handed out in: most estimated tokens first (ties: input order)."""
    return sorted(range(len(work)), key=lambda b: (-sum(costs[i] for i in work[b]), b))


def cpu_threads(engines: int) -> int:
    """Torch threads per engine on the CPU: the cores this process may use, shared out."""
    return max(1, len(os.sched_getaffinity(0)) // engines)


@dataclass
class ShardStats:
    seconds: float = 0.0
    batches: int = 0
    tokens: int = 0


@dataclass
class _Slot:
    """One engine and what it did."""

    call: Callable[[str, tuple, dict], object]
    stats: ShardStats = field(default_factory=ShardStats)


def device_groups(devices: Sequence[str], engines: int, tensor_parallel: int) -> list[str]:
    """Each engine's CUDA_VISIBLE_DEVICES: consecutive groups of `tensor_parallel` devices
    (["0,1", "2,3"] for 4 GPUs, tp 2). Devices beyond engines x tp stay idle."""
    need = engines * tensor_parallel
    if len(devices) < need:
        raise ValueError(f"{engines} engine(s) of tensor_parallel {tensor_parallel} need {need} "
                         f"GPUs; this process sees {len(devices)} ({','.join(devices) or 'none'})")
    return [",".join(devices[i * tensor_parallel:(i + 1) * tensor_parallel])
            for i in range(engines)]


def _serve(conn, backend: str, model: str, precision: str, seed: int, device: str | None,
           threads: int, tensor_parallel: int) -> None:
    """A worker process: open the engine once, then answer (method, args, kwargs) calls."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    import torch  # noqa: PLC0415 - after CUDA_VISIBLE_DEVICES

    torch.set_num_threads(threads)
    try:
        engine = open_engine(backend, model, precision, seed, tensor_parallel)
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the stage
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the stage's process is gone
            return
        if msg is None:
            return
        method, args, kwargs = msg
        try:
            conn.send(("ok", getattr(engine, method)(*args, **kwargs)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class WorkerError(RuntimeError):
    """An engine process failed; the message holds its traceback."""


class _Worker:
    def __init__(self, index: int, backend: str, model: str, precision: str, seed: int,
                 device: str | None, threads: int, tensor_parallel: int):
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        self.index = index
        self.conn, child = ctx.Pipe()
        # Not a daemon: vLLM starts processes of its own (its engine core, tensor parallel
        # workers), which a daemonic process may not. close() ends it; so does the parent's end
        # (its pipe closes and recv raises EOFError).
        self.proc = ctx.Process(target=_serve, name=f"engine-{index}", daemon=False,
                                args=(child, backend, model, precision, seed, device, threads,
                                      tensor_parallel))
        self.proc.start()
        child.close()

    def _reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise WorkerError(f"engine {self.index} died (exit code {self.proc.exitcode})") \
                from None
        if status == "error":
            raise WorkerError(f"engine {self.index} failed:\n{value}")
        return value

    def ready(self) -> None:
        self._reply()

    def call(self, method: str, args: tuple, kwargs: dict):
        self.conn.send((method, args, kwargs))
        return self._reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a worker already gone
            self.conn.send(None)
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


class EnginePool:
    """The Engine protocol over `size` engines (inference.Engine); size 1 is one engine in this
    process, batched exactly as the pool batches, so every size gives the same outputs."""

    def __init__(self, backend: InferenceBackend, model: str, precision: str, seed: int,
                 size: int, devices: Sequence[str] | None = None, tensor_parallel: int = 1,
                 node: NodeShard | None = None):
        """`devices`: each engine's CUDA_VISIBLE_DEVICES (device_groups), None on the CPU.
        Engine 0 runs in this process on the first group, which is what it sees first.
        `node`: this Pod's part when several nodes share the stage (node_shards.py)."""
        if devices is not None and len(devices) < size:
            raise ValueError(f"data_parallel {size} needs {size} devices, "
                             f"this process sees {len(devices)}")
        threads = cpu_threads(size)
        self.node = node
        self.workers = [_Worker(i, backend, model, precision, seed,
                                devices[i] if devices else None, threads, tensor_parallel)
                        for i in range(1, size)]
        try:
            if size > 1 and devices is None:
                import torch  # noqa: PLC0415

                torch.set_num_threads(threads)
            self.local = open_engine(backend, model, precision, seed, tensor_parallel)
            for w in self.workers:
                w.ready()
        except BaseException:
            self.close()
            raise
        self.tokenizer = self.local.tokenizer
        self.batches_itself = getattr(self.local, "batches_itself", False)
        self.slots = [_Slot(lambda m, a, k: getattr(self.local, m)(*a, **k)),
                      *(_Slot(w.call) for w in self.workers)]

    def close(self) -> None:
        for w in getattr(self, "workers", []):
            w.close()

    def __enter__(self) -> EnginePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the Engine protocol ------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], keys: Sequence[str], *, n: int = 1,
                 sample: bool, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int,
                 batch_size: int, desc: str = "generate") -> list[list[str]] | None:
        """As Engine.generate; None on a node other than 0 (its share went to its shard)."""
        costs = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) + n * max_tokens
                 for p in prompts]
        work = self._cut(costs, batch_size)
        kwargs = {"n": n, "sample": sample, "temperature": temperature, "top_p": top_p,
                  "max_tokens": max_tokens, "desc": desc}

        def call(b: list[int]):
            return ("generate", ([prompts[i] for i in b], [keys[i] for i in b]),
                    kwargs | {"batch_size": len(b)})

        return self._run("generate", kwargs | {"batch_size": batch_size}, work, costs, call)

    def score(self, encodings: Sequence, *, max_length: int, batch_size: int,
              desc: str = "score") -> list[float] | None:
        """As Engine.score; None on a node other than 0 (its share went to its shard)."""
        costs = [len(e.input_ids) for e in encodings]
        if getattr(self.local, "scores_by_prompt", False) and not self.batches_itself:
            from .packed_logprobs import shared_prefix_len  # noqa: PLC0415 - imports torch

            # a prompt's responses in one batch, so the engine computes the prompt once
            work = prompt_batches([tuple(e.input_ids[:shared_prefix_len(e)]) for e in encodings],
                                  costs, batch_size)
        else:
            # longest sequences together, as one engine's scorer groups them (stable: ties in
            # order)
            order = sorted(range(len(encodings)), key=lambda i: -costs[i])
            work = [[order[j] for j in b]
                    for b in self._cut([costs[i] for i in order], batch_size)]

        def call(b: list[int]):
            return ("score", ([encodings[i] for i in b],),
                    {"max_length": max_length, "batch_size": len(b), "desc": desc})

        return self._run("score", {"max_length": max_length, "batch_size": batch_size,
                                   "desc": desc}, work, costs, call)

    @property
    def leader(self) -> bool:
        """Whether this process commits the stage: node 0, or the only node."""
        return self.node is None or self.node.leader

    def lm_eval_model(self, batch_size: int):
        return self.local.lm_eval_model(batch_size)

    def shard_metrics(self) -> dict:
        """For the manifest: engines per node, nodes, and per engine (on every node) its busy
        seconds, batches and estimated tokens; with several nodes, also each node's share
        (`node_shards`: its wall seconds, batches, tokens), so imbalance shows either way."""
        if self.node is None or not self.node.per_node:
            engines = [{"node": 0, **self._engine_stats()[i]} for i in range(len(self.slots))]
            return {"data_parallel": len(self.slots), "nodes": self.node.nodes if self.node else 1,
                    "shards": engines}
        per_node = self.node.per_node
        return {"data_parallel": len(self.slots), "nodes": self.node.nodes,
                "shards": [{"node": n, **e} for n, node in enumerate(per_node)
                           for e in node["engines"]],
                "node_shards": [{"node": n, "seconds": node["seconds"],
                                 "batches": node["batches"], "tokens": node["tokens"]}
                                for n, node in enumerate(per_node)]}

    def _engine_stats(self) -> list[dict]:
        return [{"seconds": round(s.stats.seconds, 3), "batches": s.stats.batches,
                 "tokens": s.stats.tokens} for s in self.slots]

    # --- scheduling ---------------------------------------------------------------------------
    def _cut(self, costs: Sequence[int], batch_size: int) -> list[list[int]]:
        if self.batches_itself:  # a few large chunks per engine; it batches inside them
            engines = len(self.slots) * (self.node.nodes if self.node else 1)
            return even_chunks(costs, 1 if engines == 1 else 4 * engines)
        return batches(costs, batch_size)

    def _run(self, method: str, kwargs: dict, work: list[list[int]], costs: Sequence[int],
             call) -> list | None:
        """Every batch's results (this node's share, then the others' shards on node 0),
        gathered in input order; None on a node other than 0."""
        if self.node is None:
            results = self._run_batches(work, costs, call)
        else:
            def compute(mine: list[int]) -> tuple[list, list[dict]]:
                before = self._engine_stats()
                out = self._run_batches([work[b] for b in mine], costs, call)
                after = self._engine_stats()
                delta = [{k: round(a[k] - b[k], 3) if k == "seconds" else a[k] - b[k]
                          for k in a} for a, b in zip(after, before, strict=True)]
                return out, delta

            results = self.node.run(method, kwargs, work, costs, compute)
            if results is None:
                return None
        out: list = [None] * len(costs)
        for b, indices in enumerate(work):
            for i, value in zip(indices, results[b], strict=True):
                out[i] = value
        return out

    def _run_batches(self, work: list[list[int]], costs: Sequence[int], call) -> list:
        """Hand batches out longest-first to free engines; their results, by batch."""
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for b in longest_first(work, costs):
            todo.put(b)
        results: list = [None] * len(work)
        errors: list[BaseException] = []

        def drain(slot: _Slot) -> None:
            while not errors:
                try:
                    b = todo.get_nowait()
                except queue.Empty:
                    return
                method, args, kwargs = call(work[b])
                t0 = time.monotonic()
                try:
                    results[b] = slot.call(method, args, kwargs)
                except BaseException as exc:  # noqa: BLE001 - re-raised below, first one wins
                    errors.append(exc)
                    return
                slot.stats.seconds += time.monotonic() - t0
                slot.stats.batches += 1
                slot.stats.tokens += sum(costs[i] for i in work[b])

        if len(self.slots) == 1:
            drain(self.slots[0])
        else:
            threads = [threading.Thread(target=drain, args=(s,), daemon=True)
                       for s in self.slots]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return results


def devices_for(size: int, tensor_parallel: int = 1) -> list[str] | None:
    """Each engine's GPUs (device_groups of CUDA_VISIBLE_DEVICES, else of all GPUs), None on
    the CPU or for one engine on one device."""
    if size * tensor_parallel <= 1:
        return None
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        devices = [str(i) for i in range(torch.cuda.device_count())]
    return device_groups(devices, size, tensor_parallel)


def open_engines(backend: InferenceBackend, model: str, precision: str, seed: int,
                 data_parallel: int = 1, tensor_parallel: int = 1,
                 node: NodeShard | None = None) -> EnginePool:
    """What a stage infers with: `data_parallel` engines (one per GPU or GPU group, or CPU
    processes) behind the Engine protocol; outputs do not depend on their number. Close it (a
    `with` block) to stop the engines' processes."""
    return EnginePool(backend, model, precision, seed, data_parallel,
                      devices_for(data_parallel, tensor_parallel), tensor_parallel, node)


def request_tag(req) -> str:
    """A request's digest: the shards of one request are never merged into another's."""
    body = json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()


def engines_for(req) -> EnginePool:
    """The engines of a sample, score or evaluate request: its backend, model and parallelism;
    with `nodes` > 1, this Pod's part of the stage (its index from JOB_COMPLETION_INDEX)."""
    node = None
    if req.nodes > 1:
        node = NodeShard(req.output, req.nodes, node_index(req.nodes), request_tag(req),
                         wait_seconds=req.shard_wait_seconds)
    return open_engines(req.backend, req.model, req.precision, req.seed, req.data_parallel,
                        req.tensor_parallel, node)
