"""Several nodes share one inference stage: the Pods of an Indexed Job, one shard each.

The request's `nodes` says how many Pods run the stage; each learns its index from
JOB_COMPLETION_INDEX, which Kubernetes sets in every Pod of an Indexed Job (0 when `nodes` is 1).
Every node forms the very batches one engine would (engine_pool.py) from the whole input, and
`assign` gives each node a deterministic share of them, balanced by token estimate. A node runs
its share on its own `data_parallel` engines and writes the results as one shard file,
`<output>/shards/call<k>-node<i>-of<n>.json`, in one atomic write (a local rename, one S3 PUT):
a shard that exists is complete. Node 0 then waits for the other shards, merges them by batch
into input order and goes on as a one-node stage would; the manifest stays the one commit point,
and the other nodes exit without writing one.

Restarts are safe: a node whose shard already exists (same digest: same request, same batches)
does not compute it again, and node 0 reads and waits again. Shards stay beside the outputs as
the record of what each node did; they are small next to a model and never read once the
manifest exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import artifacts
from .contract import StageInputError

log = logging.getLogger(__name__)

INDEX_ENV = "JOB_COMPLETION_INDEX"
SHARDS_DIR = "shards"
SHARD_SCHEMA = 1


def node_index(nodes: int, env: dict | None = None) -> int:
    """This Pod's node index, from JOB_COMPLETION_INDEX (0 on a single node)."""
    env = os.environ if env is None else env
    raw = env.get(INDEX_ENV)
    if nodes == 1:
        return 0
    if raw is None:
        raise StageInputError(f"field 'nodes' is {nodes} but {INDEX_ENV} is not set: run each "
                              "node as a Pod of an Indexed Job (or set "
                              f"{INDEX_ENV}=0..{nodes - 1})")
    try:
        index = int(raw)
    except ValueError:
        raise StageInputError(f"{INDEX_ENV}={raw!r} is not an integer") from None
    if not 0 <= index < nodes:
        raise StageInputError(f"{INDEX_ENV}={index} is outside 0..{nodes - 1} (field 'nodes' "
                              f"is {nodes})")
    return index


def assign(work: Sequence[Sequence[int]], costs: Sequence[int], nodes: int) -> list[list[int]]:
    """Batch indices per node: costliest batch first, each to the node with the least estimated
    tokens so far (ties: the lower node; equal batches: input order). A pure function of the
    plan, so every node computes the same split; no node ends up more than one batch behind."""
    loads = [0] * nodes
    out: list[list[int]] = [[] for _ in range(nodes)]
    totals = [sum(costs[i] for i in batch) for batch in work]
    for b in sorted(range(len(work)), key=lambda b: (-totals[b], b)):
        node = min(range(nodes), key=lambda n: (loads[n], n))
        out[node].append(b)
        loads[node] += totals[b]
    return out


def wait_limit(floor_seconds: float, own_seconds: float) -> float:
    """How long node 0 waits for the other shards after its own: at least `floor_seconds`, and
    twice its own share's time, so a node restarted from scratch can still redo its share."""
    return max(floor_seconds, 2 * own_seconds)


def plan_digest(tag: str, method: str, kwargs: dict, work: Sequence[Sequence[int]],
                costs: Sequence[int], nodes: int) -> str:
    """What a shard must match to be merged: the request (tag), the call and its batches."""
    doc = {"tag": tag, "method": method, "kwargs": kwargs, "work": work, "costs": costs,
           "nodes": nodes}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class NodeShard:
    """One node's part in a sharded stage: where shards go, and what the nodes reported."""

    output: str
    nodes: int
    index: int
    tag: str  # the request's digest: a shard of another request is never merged
    wait_seconds: float = 1800.0
    poll_seconds: float = 5.0
    per_node: list[dict] = field(default_factory=list)  # node 0: each node's figures
    calls: int = 0

    @property
    def leader(self) -> bool:
        return self.index == 0

    def uri(self, call: int, node: int) -> str:
        return artifacts.join(self.output, SHARDS_DIR,
                              f"call{call}-node{node}-of{self.nodes}.json")

    def _read(self, uri: str, digest: str) -> dict | None:
        """The shard at `uri` if it exists and belongs to this plan, else None."""
        if not artifacts.exists(uri):
            return None
        doc = artifacts.read_json(uri)
        if not isinstance(doc, dict) or doc.get("digest") != digest:
            log.warning("%s belongs to another request or plan; waiting for it to be rewritten",
                        uri)
            return None
        return doc

    def run(self, method: str, kwargs: dict, work: list[list[int]], costs: Sequence[int],
            compute: Callable[[list[int]], tuple[list, list[dict]]]) -> list | None:
        """This node's share of `work` through `compute` (batch indices -> results per batch
        and per-engine figures), written as its shard; on node 0, every batch's results from
        all shards (None elsewhere)."""
        self.calls += 1
        digest = plan_digest(self.tag, method, kwargs, work, costs, self.nodes)
        mine = assign(work, costs, self.nodes)[self.index]
        own_uri = self.uri(self.calls, self.index)
        t0 = time.monotonic()
        if self._read(own_uri, digest) is not None:
            log.info("node %d: shard %s already written; not computed again", self.index,
                     own_uri)
        else:
            results, engines = compute(mine)
            seconds = time.monotonic() - t0
            doc = {"schema": SHARD_SCHEMA, "digest": digest, "node": self.index,
                   "batches": mine, "results": results,
                   "stats": {"seconds": round(seconds, 3), "batches": len(mine),
                             "tokens": sum(costs[i] for b in mine for i in work[b]),
                             "engines": engines}}
            artifacts.write_text(own_uri, json.dumps(doc, sort_keys=True,
                                                     separators=(",", ":")))
            log.info("node %d: %d of %d batches done -> %s", self.index, len(mine), len(work),
                     own_uri)
        if not self.leader:
            return None
        docs = self._wait(digest, wait_limit(self.wait_seconds, time.monotonic() - t0))
        return self._merge(docs, len(work))

    def _wait(self, digest: str, limit: float) -> list[dict]:
        uris = [self.uri(self.calls, n) for n in range(self.nodes)]
        docs: dict[int, dict] = {}
        deadline = time.monotonic() + limit
        delay = 0.2
        while True:
            for n, uri in enumerate(uris):
                if n not in docs and (doc := self._read(uri, digest)) is not None:
                    docs[n] = doc
            if len(docs) == self.nodes:
                return [docs[n] for n in range(self.nodes)]
            if time.monotonic() >= deadline:
                missing = [uris[n] for n in range(self.nodes) if n not in docs]
                raise TimeoutError(f"node 0 waited {limit:.0f} s for the other nodes' shards; "
                                   f"missing: {', '.join(missing)}. Check those Pods (their "
                                   "index is in the file name); a rerun of this Pod reuses "
                                   "the shards already written")
            time.sleep(delay)
            delay = min(delay * 2, self.poll_seconds)

    def _merge(self, docs: list[dict], n_batches: int) -> list:
        results: list = [None] * n_batches
        seen = [False] * n_batches
        for doc in docs:
            for b, value in zip(doc["batches"], doc["results"], strict=True):
                if seen[b]:
                    raise RuntimeError(f"batch {b} is in two shards (node {doc['node']})")
                seen[b], results[b] = True, value
            self._record(doc)
        if not all(seen):
            raise RuntimeError(f"batches {[b for b in range(n_batches) if not seen[b]]} are in "
                               "no shard")
        return results

    def _record(self, doc: dict) -> None:
        node, stats = doc["node"], doc["stats"]
        while len(self.per_node) <= node:
            self.per_node.append({"seconds": 0.0, "batches": 0, "tokens": 0, "engines": []})
        mine = self.per_node[node]
        mine["seconds"] = round(mine["seconds"] + stats["seconds"], 3)
        mine["batches"] += stats["batches"]
        mine["tokens"] += stats["tokens"]
        if not mine["engines"]:
            mine["engines"] = [dict(e) for e in stats["engines"]]
        else:
            for acc, e in zip(mine["engines"], stats["engines"], strict=True):
                for key in ("seconds", "batches", "tokens"):
                    acc[key] = round(acc[key] + e[key], 3) if key == "seconds" else \
                        acc[key] + e[key]
