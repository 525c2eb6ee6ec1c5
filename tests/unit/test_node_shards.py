"""Sharding a stage over nodes: the split, the layout of GPUs, the index, and the merge."""

from __future__ import annotations

import json
import random

import pytest

from cream_stages.contract import StageInputError, parse_request
from cream_stages.engine_pool import device_groups
from cream_stages.node_shards import NodeShard, assign, node_index, wait_limit


def _loads(work, costs, split):
    return [sum(costs[i] for b in mine for i in work[b]) for mine in split]


def test_every_batch_goes_to_exactly_one_node_deterministically():
    work = [[0, 1], [2], [3, 4, 5], [6]]
    costs = [4, 4, 9, 1, 1, 1, 7]
    split = assign(work, costs, 3)
    assert sorted(b for mine in split for b in mine) == [0, 1, 2, 3]
    assert split == assign(work, costs, 3)
    assert split == [[1], [0], [3, 2]]  # 9 | 8 | 7, then the 3 to the lightest (node 2)
    assert assign(work, costs, 1) == [[1, 0, 3, 2]]  # one node: all, costliest first
    assert assign([], [], 2) == [[], []]
    assert assign([[0]], [5], 3) == [[0], [], []]


@pytest.mark.parametrize("seed", range(5))
def test_nodes_are_balanced_by_tokens_not_batch_counts(seed):
    rng = random.Random(seed)
    costs = [rng.randint(1, 500) for _ in range(200)]
    work = [list(range(i, min(i + 3, 200))) for i in range(0, 200, 3)]
    for nodes in (2, 3, 7):
        loads = _loads(work, costs, assign(work, costs, nodes))
        biggest = max(sum(costs[i] for i in b) for b in work)
        # longest-first to the least loaded: no node more than one batch above another
        assert max(loads) - min(loads) <= biggest
        assert sum(loads) == sum(costs)


def test_one_huge_batch_is_one_nodes_whole_share():
    work = [[0], [1], [2], [3]]
    costs = [100, 1, 1, 1]
    assert assign(work, costs, 2) == [[0], [1, 2, 3]]


def test_node_index_comes_from_the_indexed_jobs_environment():
    assert node_index(1, {}) == 0
    assert node_index(3, {"JOB_COMPLETION_INDEX": "2"}) == 2
    with pytest.raises(StageInputError, match="JOB_COMPLETION_INDEX is not set"):
        node_index(2, {})
    with pytest.raises(StageInputError, match="outside 0..1"):
        node_index(2, {"JOB_COMPLETION_INDEX": "2"})
    with pytest.raises(StageInputError, match="not an integer"):
        node_index(2, {"JOB_COMPLETION_INDEX": "x"})


def test_node_0_waits_at_least_twice_its_own_share():
    assert wait_limit(1800, 10) == 1800
    assert wait_limit(60, 100) == 200


def test_gpu_groups_for_tensor_parallel_engines():
    gpus = [str(i) for i in range(8)]
    assert device_groups(gpus, 8, 1) == gpus
    assert device_groups(gpus, 4, 2) == ["0,1", "2,3", "4,5", "6,7"]
    assert device_groups(gpus, 2, 4) == ["0,1,2,3", "4,5,6,7"]
    assert device_groups(gpus, 1, 8) == ["0,1,2,3,4,5,6,7"]
    assert device_groups(["3", "5", "6", "7"], 2, 2) == ["3,5", "6,7"]  # CUDA_VISIBLE_DEVICES
    with pytest.raises(ValueError, match="need 8 GPUs; this process sees 4"):
        device_groups(gpus[:4], 4, 2)


def test_tensor_parallel_needs_the_vllm_backend():
    base = {"stage": "sample", "output": "/o", "model": "m", "prompts": "p"}
    assert parse_request({**base, "backend": "vllm", "tensor_parallel": 2}).tensor_parallel == 2
    with pytest.raises(ValueError, match="tensor_parallel' is 2, which needs backend vllm"):
        parse_request({**base, "tensor_parallel": 2})


def _square(work):
    """A stand-in engine call: the result of a batch is each index squared."""
    def compute(mine):
        return [[i * i for i in work[b]] for b in mine], [{"seconds": 0.0, "batches": len(mine),
                                                           "tokens": 0}]
    return compute


def test_shards_merge_into_every_batchs_results_in_any_order_of_nodes(tmp_path):
    work = [[0, 1], [2, 3], [4], [5, 6], [7]]
    costs = [3, 1, 4, 1, 5, 9, 2, 6]
    nodes = [NodeShard(str(tmp_path), 3, i, tag="req") for i in range(3)]
    # nodes 2 and 1 finish first and exit; node 0 merges
    assert nodes[2].run("generate", {}, work, costs, _square(work)) is None
    assert nodes[1].run("generate", {}, work, costs, _square(work)) is None
    merged = nodes[0].run("generate", {}, work, costs, _square(work))
    assert merged == [[i * i for i in b] for b in work]
    assert [n["batches"] for n in nodes[0].per_node] == [len(m) for m in assign(work, costs, 3)]
    assert sum(n["tokens"] for n in nodes[0].per_node) == sum(costs)


def test_a_shard_of_another_request_is_never_merged(tmp_path):
    work, costs = [[0], [1]], [1, 1]
    other = NodeShard(str(tmp_path), 2, 1, tag="another request")
    other.run("score", {}, work, costs, _square(work))
    node0 = NodeShard(str(tmp_path), 2, 0, tag="this request", wait_seconds=0.3,
                      poll_seconds=0.1)
    with pytest.raises(TimeoutError, match="call1-node1-of2.json"):
        node0.run("score", {}, work, costs, _square(work))
    # node 1 of this request rewrites it, and node 0, run again, reuses its own shard
    NodeShard(str(tmp_path), 2, 1, tag="this request").run("score", {}, work, costs,
                                                           _square(work))

    def not_again(mine):
        raise AssertionError("node 0's shard was computed again")

    again = NodeShard(str(tmp_path), 2, 0, tag="this request")
    assert again.run("score", {}, work, costs, not_again) == [[0], [1]]
    doc = json.loads((tmp_path / "shards" / "call1-node0-of2.json").read_text())
    assert doc["node"] == 0 and doc["batches"] == assign(work, costs, 2)[0]
