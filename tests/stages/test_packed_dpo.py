"""DPO with chosen and rejected sharing their prompt's forward pass: the same loss and the same
gradients as the padded batch."""

from __future__ import annotations

import copy

import pytest
import torch

from cream_stages.dpo import DpoExample, make_loss_fn
from cream_stages.logprobs import score_encodings
from cream_stages.packed_logprobs import sequence_logps_packed
from cream_stages.tokenization import encode_pair

PAIRS = [  # (prompt, chosen, rejected, max_length)
    ("What is the capital of France?", "The capital of France is Paris.",
     "Bananas are yellow and sing.", 128),
    ("A long question about the water cycle, rain, rivers, clouds, the sea and the sun, and "
     "what happens to the water after it falls?", "Rain.", "It flows.", 128),
    ("Hi", "Hello! How can I help you today with anything at all?", "", 128),
    ("Why do leaves fall in autumn?", "Trees drop their leaves to save water in the cold.",
     "Because the wind blows them away from the branches.", 24),  # both cut at max_length
]


def _examples(model, tokenizer, weights):
    out = []
    for (prompt, chosen, rejected, max_length), weight in zip(PAIRS, weights, strict=True):
        c = encode_pair(tokenizer, prompt, chosen, max_length)
        r = encode_pair(tokenizer, prompt, rejected, max_length)
        ref_c, ref_r = score_encodings(model, [c, r], tokenizer.pad_token_id, 2)
        # A reference a little away from the policy, so that the gradient is not tiny.
        out.append(DpoExample(c, r, ref_c + 0.7, ref_r - 0.4, weight))
    return out


def _loss_and_grads(tiny, layout, examples):
    model, tokenizer = tiny
    policy = copy.deepcopy(model)
    policy.train()
    loss = make_loss_fn(tokenizer.pad_token_id, beta=0.1, layout=layout)(policy, examples)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in policy.named_parameters()}


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (0.8, 0.3, 0.5, 1.0)])
def test_tree_loss_and_gradients_equal_the_padded_ones(tiny, weights):
    model, tokenizer = tiny
    examples = _examples(model, tokenizer, weights)
    assert examples[3].chosen.truncated and examples[3].rejected.truncated
    tree_loss, tree_grads = _loss_and_grads(tiny, "tree", examples)
    padded_loss, padded_grads = _loss_and_grads(tiny, "padded", examples)
    torch.testing.assert_close(tree_loss, padded_loss, rtol=1e-6, atol=1e-6)
    assert tree_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        assert grad is not None and grad.abs().max() > 0, name
        torch.testing.assert_close(tree_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_training_logps_equal_the_scores_and_keep_the_model_as_it_was(tiny):
    model, tokenizer = tiny
    encs = [encode_pair(tokenizer, p, r, m) for p, c, r, m in PAIRS] + [
        encode_pair(tokenizer, p, c, m) for p, c, r, m in PAIRS]
    got = sequence_logps_packed(model, encs)
    assert got.requires_grad
    want = score_encodings(model, encs, tokenizer.pad_token_id, 4)
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    assert model.config._attn_implementation == "sdpa"  # tree attention only inside the call
