"""DeepSpeed ZeRO-2 and ZeRO-3 on the CPU: sft and dpo in two processes under torchrun (gloo),
against the single-process `transformers` backend.

Why the runs must agree: ranks share out micro-batches, not examples (train_loop.epoch_batches),
so two ranks with batch b stepping after every micro-batch take, step by step, the very
micro-batches one process with batch b takes when it accumulates two; DeepSpeed averages the two
ranks' gradients as that process averages its two micro-batches'. Same data, seed, effective batch
and example order: the same computation, split across processes. Only float32 rounding differs
(gradients summed in another order: DeepSpeed's flat buffers and gloo's reduction against
autograd's accumulation), and Adam passes it on, so:

- every step's loss agrees within LOSS_TOL = 1e-4 (measured: at most 1.2e-6, a few float32 ulps
  at a loss of 7; the loss moves by more than 1e-2 a step, so a single misplaced micro-batch or
  step would show);
- s_M (the summed log-probability `score` computes) of held-out pairs agrees within
  SCORE_TOL = 1e-3 absolute, on sums of about -100 over 20 to 40 tokens (measured: about 1e-5),
  while training moved these scores by up to 3 (dpo) and more (sft): the tolerance cannot hide a
  model that trained differently;
- the saved weights agree within WEIGHT_TOL = 1e-4 (measured: 1.5e-6).

sft also runs DeepSpeed in one process without torchrun (a world of one), accumulating two
micro-batches like the single process: DeepSpeed must step where the loop marks the boundary.

The example counts are chosen so the ranks need no padding (64 examples in micro-batches of 4,
32 pairs in micro-batches of 2, over 2 ranks): with padding a distributed epoch repeats a
micro-batch the single process does not, and the last step differs by design.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stage_helpers import TINY, run_stage, run_stage_torchrun
from transformers import AutoModelForCausalLM

from cream_stages.data import load_conversations, load_prompts
from cream_stages.logprobs import score_encodings
from cream_stages.records import PairRecord, write
from cream_stages.tokenization import encode_pair

LOSS_TOL = 1e-4
SCORE_TOL = 1e-3
WEIGHT_TOL = 1e-4
MAX_LENGTH = 96
RANKS = 2
SFT_EXAMPLES, SFT_BATCH, SFT_EPOCHS = 64, 4, 2
DPO_PAIRS, DPO_BATCH, DPO_EPOCHS = 32, 2, 2


def _turns(conversation: list[dict]) -> tuple[str, str]:
    return conversation[0]["content"], conversation[-1]["content"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny):
    """SFT examples, DPO pairs scored by the tiny model (M0, the reference), held-out pairs."""
    root = tmp_path_factory.mktemp("dist-data")
    conversations = load_conversations("builtin://data/sft.jsonl")
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"messages": c}) + "\n"
                           for c in conversations[:SFT_EXAMPLES]))
    model, tokenizer = tiny
    turns = [_turns(c) for c in conversations[:DPO_PAIRS]]
    chosen = [encode_pair(tokenizer, p, r, MAX_LENGTH) for p, r in turns]
    rejected = [encode_pair(tokenizer, p, turns[(i + 1) % DPO_PAIRS][1], MAX_LENGTH)
                for i, (p, _) in enumerate(turns)]
    ref = score_encodings(model, chosen + rejected, tokenizer.pad_token_id, 16)
    pairs = root / "pairs.jsonl"
    write(str(pairs), (PairRecord(
        prompt_id=f"p{i}", prompt=p, chosen=r, rejected=turns[(i + 1) % DPO_PAIRS][1],
        chosen_index=0, rejected_index=1, weight=(i % 5) / 4,
        ref_chosen_logp=ref[i], ref_rejected_logp=ref[DPO_PAIRS + i],
        ref_chosen_length=chosen[i].n_targets, ref_rejected_length=rejected[i].n_targets)
        for i, (p, r) in enumerate(turns)))
    # Prompts neither stage trains on, with answers from past the SFT examples.
    prompts = load_prompts("builtin://data/prompts-1.jsonl")[:8]
    answers = [_turns(c)[1] for c in conversations[SFT_EXAMPLES:]]
    held_out = [encode_pair(tokenizer, p.text, answers[i % len(answers)], MAX_LENGTH)
                for i, p in enumerate(prompts)]
    return {"sft": str(sft), "pairs": str(pairs), "held_out": held_out, "tokenizer": tokenizer}


SINGLE = {"backend": "transformers", "gradient_accumulation": RANKS}
ZERO2 = {"backend": "deepspeed", "zero_stage": 2}
ZERO3 = {"backend": "deepspeed", "zero_stage": 3}
# DeepSpeed without torchrun (a world of one), accumulating like the single process: DeepSpeed
# must step where the loop says (set_gradient_accumulation_boundary), not where it counts.
ZERO2_ONE_PROCESS = {"backend": "deepspeed", "zero_stage": 2, "gradient_accumulation": RANKS}


def _train(tmp_path_factory, stage: str, inputs: dict, batch: int, epochs: int,
           runs: dict[str, dict]) -> dict:
    """The same stage in several ways: name -> (train settings) -> output directory. "single"
    runs in one process; a DeepSpeed run without accumulation runs as RANKS ranks under
    torchrun."""
    root = tmp_path_factory.mktemp(f"dist-{stage}")
    train = {"epochs": epochs, "learning_rate": 1e-3, "batch_size": batch,
             "max_length": MAX_LENGTH}
    outputs = {}
    for name, backend in runs.items():
        out = root / name
        request = {"stage": stage, "output": str(out), "model": TINY, **inputs,
                   "train": {**train, **backend}}
        if backend.get("gradient_accumulation", 1) > 1:
            proc = run_stage(stage, request, root, name)
        else:
            proc = run_stage_torchrun(stage, request, root, RANKS, name)
        assert proc.returncode == 0, f"{stage} {name} failed:\n{proc.stderr[-4000:]}"
        outputs[name] = out
    return outputs


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, data):
    return _train(tmp_path_factory, "sft", {"data": data["sft"]}, SFT_BATCH, SFT_EPOCHS,
                  {"single": SINGLE, "zero2": ZERO2, "zero3": ZERO3,
                   "zero2_one_process": ZERO2_ONE_PROCESS})


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory, data):
    return _train(tmp_path_factory, "dpo", {"pairs": data["pairs"], "beta": 0.1}, DPO_BATCH,
                  DPO_EPOCHS, {"single": SINGLE, "zero2": ZERO2, "zero3": ZERO3})


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["loss"] for r in rows]


def _load(out: Path):
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    return model.eval()


def _held_out_scores(out: Path | str, data) -> list[float]:
    return score_encodings(_load(out) if isinstance(out, Path) else out, data["held_out"],
                           data["tokenizer"].pad_token_id, 8)


def _check_parity(runs: dict, data, tiny, examples: int, batch: int, epochs: int) -> None:
    steps = epochs * examples // (batch * RANKS)
    single = _losses(runs["single"])
    assert len(single) == steps
    # The tolerance is far below what one step of training changes.
    assert min(abs(a - b) for a, b in zip(single, single[1:], strict=False)) > 10 * LOSS_TOL
    base = _held_out_scores(tiny[0], data)
    reference = _held_out_scores(runs["single"], data)
    assert max(abs(a - b) for a, b in zip(reference, base, strict=True)) > 100 * SCORE_TOL
    weights = _load(runs["single"]).state_dict()
    for name in set(runs) - {"single"}:
        out = runs[name]
        manifest = json.loads((out / "manifest.json").read_text())
        # Two ranks, one micro-batch each per step: half the micro-batches per rank, the same
        # number of optimizer steps as one process accumulating two.
        assert manifest["metrics"]["steps"] == steps, name
        assert manifest["outputs"] == {"model": ".", "train_log": "train_log.jsonl"}
        assert _losses(out) == pytest.approx(single, abs=LOSS_TOL), name
        assert _held_out_scores(out, data) == pytest.approx(reference, abs=SCORE_TOL), name
        # A consolidated transformers checkpoint: every weight of the model, full size (ZeRO-3
        # partitions them across the ranks while training).
        state = _load(out).state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in weights.items()}
        diff = max((state[k] - weights[k]).abs().max().item() for k in weights)
        assert diff <= WEIGHT_TOL, f"{name}: weights differ by {diff}"


def test_sft_zero2_and_zero3_on_two_ranks_and_deepspeed_in_one_process_match_transformers(
        sft_runs, data, tiny):
    _check_parity(sft_runs, data, tiny, SFT_EXAMPLES, SFT_BATCH, SFT_EPOCHS)


def test_dpo_zero2_and_zero3_on_two_ranks_match_one_process(dpo_runs, data, tiny):
    _check_parity(dpo_runs, data, tiny, DPO_PAIRS, DPO_BATCH, DPO_EPOCHS)
