"""The pure parts of the vLLM and DeepSpeed backends and of the training loop's sharding (vLLM runs
only on a GPU; DeepSpeed also runs on the CPU in tests/stages/test_distributed_training.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cream_stages import infer_vllm as vb
from cream_stages.contract import TrainParams
from cream_stages.train_deepspeed import deepspeed_config, dist_env, placement, single_process_env
from cream_stages.train_loop import epoch_batches, steps_per_epoch


def test_deepspeed_config_zero2_bf16():
    train = TrainParams(epochs=1, learning_rate=1e-6, batch_size=4, gradient_accumulation=2,
                        backend="deepspeed", zero_stage=2, precision="bfloat16")
    cfg = deepspeed_config(train, world_size=8)
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["train_batch_size"] == 4 * 2 * 8
    assert cfg["zero_optimization"]["stage"] == 2
    assert "stage3_gather_16bit_weights_on_model_save" not in cfg["zero_optimization"]
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["optimizer"]["type"] == "AdamW"
    assert cfg["optimizer"]["params"]["lr"] == 1e-6
    assert "torch_adam" not in cfg["optimizer"]["params"]  # DeepSpeed's FusedAdam on GPUs


def test_deepspeed_config_zero3_gathers_weights_for_saving():
    train = TrainParams(epochs=1, learning_rate=1e-6, batch_size=2, backend="deepspeed",
                        zero_stage=3)
    cfg = deepspeed_config(train, world_size=2)
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert cfg["bf16"]["enabled"] is False and cfg["train_batch_size"] == 4


def test_the_cpu_differs_from_the_gpu_in_one_place():
    gpu, cpu = placement(cuda=True), placement(cuda=False)
    assert (gpu.accelerator, gpu.collectives, gpu.set_cuda_device) == ("cuda", "nccl", True)
    assert (cpu.accelerator, cpu.collectives, cpu.set_cuda_device) == ("cpu", "gloo", False)
    assert not gpu.torch_adam and gpu.skip_ops == ()
    assert cpu.torch_adam and cpu.skip_ops == ("deepspeed_shm_comm",)
    train = TrainParams(epochs=1, learning_rate=1e-3, batch_size=2, backend="deepspeed",
                        zero_stage=3)
    on_gpu = deepspeed_config(train, world_size=2)
    assert deepspeed_config(train, world_size=2, where=gpu) == on_gpu
    on_cpu = deepspeed_config(train, world_size=2, where=cpu)
    assert on_cpu["optimizer"]["params"] == {**on_gpu["optimizer"]["params"], "torch_adam": True}
    assert {k: v for k, v in on_cpu.items() if k != "optimizer"} == \
        {k: v for k, v in on_gpu.items() if k != "optimizer"}


def test_a_stage_without_torchrun_is_a_world_of_one():
    env = single_process_env(41234)
    assert env["WORLD_SIZE"] == "1" and env["RANK"] == "0" and env["LOCAL_RANK"] == "0"
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "41234"


def test_dist_env_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == (4, 3, 1)


def test_ranks_get_disjoint_shards_of_equal_length():
    shards = [epoch_batches(10, 2, seed=3, epoch=0, world_size=3, rank=r) for r in range(3)]
    flat = [[i for b in shard for i in b] for shard in shards]
    assert len({len(f) for f in flat}) == 1  # same number of steps on every rank
    assert set().union(*map(set, flat)) == set(range(10))
    assert epoch_batches(10, 2, 3, 0) == epoch_batches(10, 2, 3, 0)
    assert epoch_batches(10, 2, 3, 0) != epoch_batches(10, 2, 3, 1)


@pytest.mark.parametrize(("n", "batch", "ranks", "ga"),
                         [(64, 4, 2, 1), (64, 4, 2, 2), (48, 2, 4, 1), (36, 3, 2, 3)])
def test_ranks_take_the_micro_batches_one_process_accumulates(n, batch, ranks, ga):
    """W ranks accumulating g micro-batches per step step on exactly the micro-batches of one
    process accumulating g * W, in order: the distributed run is the single-process one, split."""
    for epoch in (0, 1):
        single = epoch_batches(n, batch, seed=5, epoch=epoch)
        shards = [epoch_batches(n, batch, 5, epoch, ranks, r) for r in range(ranks)]
        steps = len(single) // (ga * ranks)
        assert len(single) == steps * ga * ranks  # sizes without padding
        for step in range(steps):
            mine = single[step * ga * ranks:(step + 1) * ga * ranks]
            theirs = [mb for shard in shards for mb in shard[step * ga:(step + 1) * ga]]
            assert sorted(mine) == sorted(theirs)
        train = TrainParams(epochs=1, learning_rate=1e-3, batch_size=batch,
                            gradient_accumulation=ga)
        assert steps_per_epoch(n, train, ranks) == steps
        single_ga = TrainParams(epochs=1, learning_rate=1e-3, batch_size=batch,
                                gradient_accumulation=ga * ranks)
        assert steps_per_epoch(n, single_ga) == steps


def test_padding_repeats_whole_micro_batches_so_ranks_run_equal_steps():
    shards = [epoch_batches(9, 2, seed=1, epoch=0, world_size=2, rank=r) for r in range(2)]
    assert [len(s) for s in shards] == [3, 3]  # 5 micro-batches, the first one again on rank 1
    assert shards[1][-1] == shards[0][0]
    assert sorted(i for mb in shards[0] + shards[1][:-1] for i in mb) == list(range(9))


def test_steps_per_epoch():
    train = TrainParams(epochs=1, learning_rate=1e-3, batch_size=4, gradient_accumulation=2)
    assert steps_per_epoch(16, train) == 2
    assert steps_per_epoch(17, train) == 3
    assert steps_per_epoch(16, train, world_size=2) == 1


def test_token_chunks_bound_tokens_and_requests():
    lengths = [5, 5, 5, 12, 3, 3, 3, 3]
    chunks = vb.token_chunks(lengths, max_tokens=10, max_requests=3)
    assert [i for c in chunks for i in c] == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) <= 3
        assert sum(lengths[i] for i in chunk) <= 10 or len(chunk) == 1
    assert chunks == [[0, 1], [2], [3], [4, 5, 6], [7]]


def test_sampling_kwargs_map_the_request():
    kw = vb.sampling_kwargs(n=5, temperature=0.8, top_p=0.95, max_tokens=768, seed=7)
    assert kw == {"n": 5, "temperature": 0.8, "top_p": 0.95, "top_k": -1, "max_tokens": 768,
                  "seed": 7}
    assert vb.greedy_kwargs(32)["temperature"] == 0.0
    assert vb.scoring_kwargs()["prompt_logprobs"] == 0


def test_request_seeds_are_stable_and_distinct():
    assert vb.request_seed(0, "p1") == vb.request_seed(0, "p1")
    assert vb.request_seed(0, "p1") != vb.request_seed(0, "p2")
    assert vb.request_seed(0, "p1") != vb.request_seed(1, "p1")
    assert 0 <= vb.request_seed(123, "x") < 2**31


@dataclass
class _Logprob:  # the shape of vLLM's Logprob: what sum_prompt_logprobs reads
    logprob: float


def test_sum_prompt_logprobs_over_target_positions():
    ids = [1, 7, 8, 9]
    prompt_logprobs = [None, {7: _Logprob(-0.5)}, {8: _Logprob(-1.0), 3: _Logprob(-0.1)},
                       {9: _Logprob(-2.0)}]
    assert vb.sum_prompt_logprobs(prompt_logprobs, ids, [0, 0, 1, 1]) == pytest.approx(-3.0)
    with pytest.raises(RuntimeError):
        vb.sum_prompt_logprobs([None, {}, {}, {}], ids, [0, 1, 0, 0])
