"""Generation on the CPU: decoding is what the request says, reproducibly."""

from __future__ import annotations

import copy

from cream_stages.infer_transformers import generate

PROMPTS = ["What is 2 plus 3?", "Name a primary color.", "Hi"]


def _sample(model, tokenizer, seed=0):
    return generate(model, tokenizer, PROMPTS, n=2, sample=True, temperature=0.8, top_p=0.95,
                    max_tokens=6, batch_size=2, seed=seed)


def test_sampling_is_reproducible_and_seeded(tiny):
    model, tokenizer = tiny
    first = _sample(model, tokenizer)
    assert [len(r) for r in first] == [2, 2, 2]
    assert _sample(model, tokenizer) == first
    assert _sample(model, tokenizer, seed=1) != first


def test_the_checkpoints_own_decoding_defaults_do_not_leak_in(tiny):
    model, tokenizer = tiny
    expected = _sample(model, tokenizer)
    greedy = generate(model, tokenizer, PROMPTS, sample=False, max_tokens=6, batch_size=3)
    odd = copy.deepcopy(model)
    odd.generation_config.repetition_penalty = 50.0
    odd.generation_config.temperature = 0.01
    odd.generation_config.top_k = 2
    assert _sample(odd, tokenizer) == expected
    assert generate(odd, tokenizer, PROMPTS, sample=False, max_tokens=6, batch_size=3) == greedy
