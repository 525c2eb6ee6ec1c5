"""Several nodes share sample, score and evaluate: 1 node and 3 nodes write byte-identical outputs.

Three stage processes with JOB_COMPLETION_INDEX 0, 1 and 2, started together on one output
directory, stand in for the three Pods of an Indexed Job (node_shards.py): each runs its share of
the batches and writes a shard, node 0 merges them and commits. Only the manifest's per-node and
per-engine figures may differ from the one-node run; every file a later stage reads is compared
byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from stage_helpers import TINY, mtimes, run_stage

PROMPTS = "builtin://data/prompts-2.jsonl"
TASKS = [{"name": "arc_easy", "uri": "builtin://data/arc_easy.jsonl", "limit": 7,
          "format": "multiple_choice"},
         {"name": "gsm8k", "uri": "builtin://data/gsm8k.jsonl", "limit": 5, "format": "gsm8k"}]
FIGURES = ("data_parallel", "nodes", "shards", "node_shards")


def _start(stage: str, request: dict, root, name: str, index: int) -> subprocess.Popen:
    path = root / f"{name}.request.json"
    path.write_text(json.dumps({"stage": stage, **request}))
    env = {**os.environ, "JOB_COMPLETION_INDEX": str(index),
           "CREAM_TERMINATION_LOG": str(root / f"{name}-{index}.term")}
    return subprocess.Popen([sys.executable, "-m", "cream_stages", stage, "--request",
                             str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _nodes(stage: str, request: dict, root, name: str, nodes: int) -> dict:
    """The stage on `nodes` concurrent processes, as the Pods of an Indexed Job."""
    request = {**request, "output": str(root / name), "nodes": nodes}
    procs = [_start(stage, request, root, name, i) for i in range(nodes)]
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name} node {i} failed:\n{err[-3000:]}"
    return json.loads((root / name / "manifest.json").read_text())


def _one(stage: str, request: dict, root, name: str) -> dict:
    request = {**request, "output": str(root / name)}
    proc = run_stage(stage, {"stage": stage, **request}, root, name)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    return json.loads((root / name / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """sample, score and evaluate on 1 node and on 3 (odd batch sizes: uneven shares)."""
    root = tmp_path_factory.mktemp("nodes")
    requests = {
        "sample": {"model": TINY, "prompts": PROMPTS, "n": 3, "max_tokens": 10,
                   "max_prompts": 7, "batch_size": 2, "seed": 3},
        # both score runs read the 1-node responses, so a sampling difference cannot hide one
        "score": {"model": TINY, "model_index": 0, "max_length": 64, "batch_size": 4,
                  "responses": str(root / "sample-1" / "responses.jsonl")},
        "evaluate": {"model": TINY, "tasks": TASKS, "max_tokens": 8, "batch_size": 3},
    }
    out = {}
    for stage, request in requests.items():
        out[stage, 1] = _one(stage, request, root, f"{stage}-1")
        out[stage, 3] = _nodes(stage, request, root, f"{stage}-3", 3)
    return root, out


@pytest.mark.parametrize(("stage", "file"), [("sample", "responses.jsonl"),
                                             ("score", "scores.jsonl"),
                                             ("evaluate", "predictions.jsonl")])
def test_one_and_three_nodes_write_identical_outputs(runs, stage, file):
    root, manifests = runs
    one = (root / f"{stage}-1" / file).read_bytes()
    three = (root / f"{stage}-3" / file).read_bytes()
    assert one and one == three
    assert {k: v for k, v in manifests[stage, 1]["metrics"].items() if k not in FIGURES} == \
        {k: v for k, v in manifests[stage, 3]["metrics"].items() if k not in FIGURES}
    assert manifests[stage, 1]["outputs"] == manifests[stage, 3]["outputs"]


@pytest.mark.parametrize("stage", ["sample", "score", "evaluate"])
def test_the_manifest_shows_each_nodes_share(runs, stage):
    _, manifests = runs
    one, three = manifests[stage, 1]["metrics"], manifests[stage, 3]["metrics"]
    assert one["nodes"] == 1 and "node_shards" not in one
    assert three["nodes"] == 3 and three["data_parallel"] == 1
    nodes = three["node_shards"]
    assert [n["node"] for n in nodes] == [0, 1, 2]
    assert [s["node"] for s in three["shards"]] == [0, 1, 2]  # one engine on each node
    # every batch ran exactly once, on some node, and the nodes shared them
    assert sum(n["batches"] for n in nodes) == one["shards"][0]["batches"]
    assert sum(n["tokens"] for n in nodes) == one["shards"][0]["tokens"]
    assert all(n["batches"] > 0 and n["seconds"] >= 0 for n in nodes)


def test_a_node_run_again_reuses_its_shard_and_node_0_can_come_last(tmp_path):
    """A restarted Pod: node 1 runs twice (its shard is not computed again), and node 0, started
    only after it, still merges and commits; the outputs equal one node's."""
    request = {"stage": "evaluate", "model": TINY, "tasks": TASKS[1:], "max_tokens": 6,
               "batch_size": 2}
    one = _one("evaluate", request, tmp_path, "one")
    two = {**request, "output": str(tmp_path / "two"), "nodes": 2}
    first = run_stage("evaluate", two, tmp_path, "n1", env={"JOB_COMPLETION_INDEX": "1"})
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (tmp_path / "two" / "manifest.json").exists()  # only node 0 commits
    shards = mtimes(tmp_path / "two" / "shards")
    assert list(shards) == ["call1-node1-of2.json"]
    again = run_stage("evaluate", two, tmp_path, "n1b", env={"JOB_COMPLETION_INDEX": "1"})
    assert again.returncode == 0 and "not computed again" in again.stderr
    assert mtimes(tmp_path / "two" / "shards") == shards
    zero = run_stage("evaluate", two, tmp_path, "n0", env={"JOB_COMPLETION_INDEX": "0"})
    assert zero.returncode == 0, zero.stderr[-3000:]
    assert (tmp_path / "two" / "predictions.jsonl").read_bytes() == \
        (tmp_path / "one" / "predictions.jsonl").read_bytes()
    metrics = json.loads((tmp_path / "two" / "manifest.json").read_text())["metrics"]
    assert metrics["accuracy"] == one["metrics"]["accuracy"] and metrics["nodes"] == 2


def test_node_0_fails_loudly_when_a_shard_never_comes(tmp_path):
    request = {"stage": "evaluate", "model": TINY, "tasks": TASKS[1:], "max_tokens": 4,
               "output": str(tmp_path / "out"), "nodes": 3, "shard_wait_seconds": 1}
    proc = run_stage("evaluate", request, tmp_path, "alone", env={"JOB_COMPLETION_INDEX": "0"})
    assert proc.returncode == 1
    assert "call1-node1-of3.json" in proc.stderr and "call1-node2-of3.json" in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_a_node_without_its_index_is_bad_input(tmp_path):
    request = {"stage": "sample", "model": TINY, "prompts": PROMPTS, "n": 2, "max_tokens": 4,
               "output": str(tmp_path / "out"), "nodes": 2}
    env = {k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, "-m", "cream_stages", "sample", "--request",
                           str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "JOB_COMPLETION_INDEX is not set" in proc.stderr
