"""One DPO step on the tiny model moves the chosen-minus-rejected margin the way C says."""

from __future__ import annotations

import copy

import pytest
import torch

from cream_stages.dpo import DpoExample, make_loss_fn
from cream_stages.logprobs import score_encodings
from cream_stages.tokenization import encode_pair

PROMPT = "What is the capital of France?"
CHOSEN = "The capital of France is Paris."
REJECTED = "Bananas are yellow and sing."


def _margin_after_one_step(tiny, weight: float) -> tuple[float, float, float]:
    model, tokenizer = tiny
    policy = copy.deepcopy(model)  # the session's model stays untouched
    encs = [encode_pair(tokenizer, PROMPT, CHOSEN, 128),
            encode_pair(tokenizer, PROMPT, REJECTED, 128)]
    ref_c, ref_r = score_encodings(policy, encs, tokenizer.pad_token_id, 2)
    example = DpoExample(encs[0], encs[1], ref_c, ref_r, weight)
    loss_fn = make_loss_fn(tokenizer.pad_token_id, beta=0.1)
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)
    loss = loss_fn(policy, [example])
    loss.backward()
    optimizer.step()
    policy.eval()
    new_c, new_r = score_encodings(policy, encs, tokenizer.pad_token_id, 2)
    return loss.item(), ref_c - ref_r, new_c - new_r


def test_plain_dpo_step_widens_the_margin(tiny):
    loss, before, after = _margin_after_one_step(tiny, weight=1.0)
    assert loss == pytest.approx(0.6931, abs=1e-3)  # policy == reference: -log sigmoid(0)
    assert after > before + 0.1


def test_reversed_preference_step_narrows_the_margin(tiny):
    _, before, after = _margin_after_one_step(tiny, weight=0.0)
    assert after < before - 0.1


def test_half_consistency_has_no_gradient_at_the_reference(tiny):
    # C = 1/2: the loss is symmetric in z and minimal at z = 0, where the policy starts.
    model, tokenizer = tiny
    policy = copy.deepcopy(model)
    encs = [encode_pair(tokenizer, PROMPT, CHOSEN, 128),
            encode_pair(tokenizer, PROMPT, REJECTED, 128)]
    ref_c, ref_r = score_encodings(policy, encs, tokenizer.pad_token_id, 2)
    loss = make_loss_fn(tokenizer.pad_token_id, beta=0.1)(
        policy, [DpoExample(encs[0], encs[1], ref_c, ref_r, 0.5)])
    loss.backward()
    grad_norm = sum(p.grad.norm() ** 2 for p in policy.parameters() if p.grad is not None) ** 0.5
    assert grad_norm.item() < 1e-6


@pytest.fixture
def dropout_checkpoint(tiny_path, tmp_path):
    """The tiny model with attention dropout 0.5 in its config (Llama applies it functionally)."""
    import json
    import shutil

    path = tmp_path / "with-dropout"
    shutil.copytree(tiny_path, path)
    config = json.loads((path / "config.json").read_text())
    config["attention_dropout"] = 0.5
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_dropout_does_not_perturb_the_policy_at_step_zero(dropout_checkpoint, tmp_path):
    # The reference log-probs come from the score stage's path (eval mode); the policy's from the
    # training backend's model, in train mode. With dropout active z would be noise at step 0.
    import json
    import math

    from cream_stages.contract import TrainParams
    from cream_stages.models import load_model
    from cream_stages.train_torch import TorchTrainer

    scorer, tokenizer, _ = load_model(str(dropout_checkpoint))
    encs = [encode_pair(tokenizer, PROMPT, CHOSEN, 128),
            encode_pair(tokenizer, PROMPT, REJECTED, 128)]
    ref_c, ref_r = score_encodings(scorer, encs, tokenizer.pad_token_id, 2)
    trainer = TorchTrainer(str(dropout_checkpoint),
                           TrainParams(epochs=1, learning_rate=1e-3, batch_size=1))
    assert trainer.model.training
    loss_fn = make_loss_fn(tokenizer.pad_token_id, beta=0.1)
    examples = [DpoExample(encs[0], encs[1], ref_c, ref_r, 1.0)] * 4
    for example in examples:  # several forward passes: a random mask would differ every time
        with trainer.autocast():
            loss = loss_fn(trainer.model, [example])
        assert loss.item() == pytest.approx(math.log(2), abs=1e-5)  # -log sigmoid(0): z = 0
    # The checkpoint keeps its own configuration.
    trainer.save(tokenizer, str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["attention_dropout"] == 0.5


def test_dropout_probabilities_are_found_by_name():
    from transformers import GPT2Config, LlamaConfig

    from cream_stages.models import dropout_probabilities

    assert dropout_probabilities(LlamaConfig(attention_dropout=0.1)) == {"attention_dropout": 0.1}
    assert dropout_probabilities(LlamaConfig()) == {}
    found = dropout_probabilities(GPT2Config())
    assert {"attn_pdrop", "resid_pdrop", "embd_pdrop"} <= set(found)
