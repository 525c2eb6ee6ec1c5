"""s_M on the tiny model: equal to a token-by-token sum, unchanged by batching and padding."""

from __future__ import annotations

import pytest
import torch

from cream_stages.logprobs import score_encodings
from cream_stages.tokenization import encode_pair, prompt_text

PAIRS = [
    ("What is 2 plus 3?", "2 plus 3 is 5."),
    ("Name a primary color.", "Red."),
    ("Why do leaves fall in autumn?", "Trees drop their leaves to save water in the cold."),
    ("Hi", ""),
    ("A much longer question about the water cycle, rain, rivers and the sea?", "Rain."),
]


def _token_by_token(model, enc) -> float:
    """An independent s_M: feed each prefix, read the next token's log-prob, one at a time."""
    total = 0.0
    ids = enc.input_ids
    with torch.no_grad():
        for k in range(1, len(ids)):
            if not enc.target_mask[k]:
                continue
            logits = model(input_ids=torch.tensor([ids[:k]])).logits[0, -1].double()
            total += torch.log_softmax(logits, -1)[ids[k]].item()
    return total


def test_score_equals_token_by_token_sum(tiny):
    model, tokenizer = tiny
    encs = [encode_pair(tokenizer, p, r, 256) for p, r in PAIRS]
    batched = score_encodings(model, encs, tokenizer.pad_token_id, batch_size=len(encs))
    for enc, value in zip(encs, batched, strict=True):
        assert value == pytest.approx(_token_by_token(model, enc), abs=1e-4)
        assert value < 0


def test_batching_and_padding_do_not_change_scores(tiny):
    model, tokenizer = tiny
    encs = [encode_pair(tokenizer, p, r, 256) for p, r in PAIRS]
    assert len({len(e.input_ids) for e in encs}) > 1  # padding really happens
    one_by_one = score_encodings(model, encs, tokenizer.pad_token_id, batch_size=1)
    for batch_size in (2, 3, len(encs)):
        got = score_encodings(model, encs, tokenizer.pad_token_id, batch_size=batch_size)
        assert got == pytest.approx(one_by_one, abs=1e-5)


def test_prompt_tokens_are_the_ones_sample_feeds_and_the_response_is_the_target(tiny):
    _, tokenizer = tiny
    prompt, response = PAIRS[0]
    enc = encode_pair(tokenizer, prompt, response, 256)
    fed = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    n_prompt = enc.target_mask.index(1)
    assert enc.input_ids[:n_prompt] == fed
    assert all(enc.target_mask[n_prompt:])
    target = enc.input_ids[n_prompt:]
    assert tokenizer.decode(target) == response + tokenizer.eos_token  # the end of turn counts


def test_truncation_keeps_the_prompt_and_cuts_the_response(tiny):
    _, tokenizer = tiny
    prompt, response = PAIRS[2]
    full = encode_pair(tokenizer, prompt, response, 256)
    n_prompt = full.target_mask.index(1)
    cut = encode_pair(tokenizer, prompt, response, n_prompt + 3)
    assert cut.truncated and cut.input_ids == full.input_ids[:n_prompt + 3]
    assert cut.n_targets == 3
    # A prompt longer than max_length keeps its end and one response token.
    tiny_max = encode_pair(tokenizer, prompt, response, 4)
    assert tiny_max.input_ids == full.input_ids[n_prompt - 3:n_prompt + 1]
    assert tiny_max.n_targets == 1
