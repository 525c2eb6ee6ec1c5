"""The prefix-shared, packed scorer gives the padded reference's s_M, to 1e-4 nats in float32.

Mixed lengths, N = 1..8 responses per prompt, prompts longer than their responses and the
reverse, truncation at max_length (the response cut, and a prompt longer than max_length), rows
too short for one tree (trees split, long sequences alone), the log-softmax in tiny chunks; on
the tiny model and on a model of SmolLM2-135M's architecture and size (random weights, long
random sequences). The real SmolLM2-135M-Instruct weights are held to the same tolerance in
test_real_model.py, which converts its GGUF file once.
"""

from __future__ import annotations

import random

import pytest
import torch

from cream_stages.infer_transformers import TransformersEngine
from cream_stages.logprobs import score_encodings
from cream_stages.packed_logprobs import (
    pack_rows,
    plan_trees,
    score_packed,
    supports_packing,
    target_logps,
)
from cream_stages.tokenization import Encoded, encode_pair

TOL = 1e-4
TEXT = ("the model answers every question by thinking step by step and then it writes the "
        "final answer after the word answer so that a reader can check it")
WORDS = TEXT.split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def _mixed_encodings(tokenizer, seed: int = 0) -> list[Encoded]:
    """Prompts with 1..8 responses; long prompts with short responses and the reverse; some cut
    at max_length, one prompt longer than max_length."""
    rng = random.Random(seed)
    encs = []
    for n in range(1, 9):
        long_prompt = n % 2 == 0
        prompt = _text(rng, rng.randint(30, 60) if long_prompt else rng.randint(2, 6))
        max_length = 48 if n in (3, 6) else 512
        for _ in range(n):
            words = rng.randint(0, 5) if long_prompt else rng.randint(20, 70)
            encs.append(encode_pair(tokenizer, prompt, _text(rng, words), max_length))
    over = _text(rng, 80)
    encs += [encode_pair(tokenizer, over, _text(rng, k), 24) for k in (3, 9)]
    rng.shuffle(encs)
    return encs


def _worst(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_the_mix_covers_what_it_claims(tiny):
    _, tokenizer = tiny
    encs = _mixed_encodings(tokenizer)
    prompts = {}
    for e in encs:
        k = e.target_mask.index(1)
        prompts.setdefault(tuple(e.input_ids[:k]), []).append(e)
    assert sorted({len(v) for v in prompts.values()}) == list(range(1, 9))
    assert any(e.truncated and e.target_mask.index(1) > 0 for e in encs)  # response cut
    assert any(len(e.input_ids) == 24 and e.n_targets == 1 for e in encs)  # prompt cut
    assert any(e.target_mask.index(1) > e.n_targets for e in encs)  # prompt longer
    assert any(e.target_mask.index(1) < e.n_targets for e in encs)  # response longer


@pytest.mark.parametrize("layout", ["tree", "packed"])
@pytest.mark.parametrize("row_tokens", [40, 300, 100_000])
def test_packed_scores_equal_the_padded_path(tiny, layout, row_tokens):
    model, tokenizer = tiny
    encs = _mixed_encodings(tokenizer)
    reference = score_encodings(model, encs, tokenizer.pad_token_id, batch_size=4)
    got = score_packed(model, encs, layout=layout, row_tokens=row_tokens)
    assert _worst(got, reference) < TOL
    assert all(v < 0 for v in got)


def test_small_logit_chunks_change_nothing(tiny):
    model, tokenizer = tiny
    encs = _mixed_encodings(tokenizer, seed=1)
    whole = score_packed(model, encs, row_tokens=100_000)
    vocab = model.get_output_embeddings().weight.shape[0]
    chunked = score_packed(model, encs, row_tokens=100_000, logits_bytes=3 * 4 * vocab)
    assert _worst(chunked, whole) < TOL  # only the matmul shapes differ


def test_logits_are_computed_a_bounded_chunk_at_a_time(tiny):
    """The [tokens x vocab] logits never exist at once: the head sees at most the chunk."""
    model, _ = tiny
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    seen = []

    class RecordingHead(torch.nn.Module):
        def forward(self, h):
            seen.append(h.shape[0])
            return head(h)

    states = torch.randn(50, head.weight.shape[1])
    tokens = torch.randint(0, vocab, (50,))
    with torch.no_grad():
        got = target_logps(RecordingHead(), states, tokens, vocab, logits_bytes=7 * 4 * vocab)
        want = torch.log_softmax(head(states), -1)[torch.arange(50), tokens]
    assert max(seen) == 7 and sum(seen) == 50
    torch.testing.assert_close(got, want)


def test_a_sequence_without_scored_tokens_scores_zero(tiny):
    model, tokenizer = tiny
    enc = encode_pair(tokenizer, "Name a colour.", "Red.", 64)
    k = enc.target_mask.index(1)
    prompt_only = Encoded(enc.input_ids[:k], [0] * k)
    first_only = Encoded(enc.input_ids[:1], [1])  # position 0 is never scored
    encs = [prompt_only, enc, first_only]
    reference = score_encodings(model, encs, tokenizer.pad_token_id, batch_size=3)
    got = score_packed(model, encs, row_tokens=64)
    assert got[0] == 0.0 and got[2] == 0.0 and reference[0] == 0.0 and reference[2] == 0.0
    assert got[1] == pytest.approx(reference[1], abs=TOL)


def test_trees_share_the_prompt_and_fit_their_rows(tiny):
    _, tokenizer = tiny
    encs = [encode_pair(tokenizer, "A shared prompt here", r, 256)
            for r in ("one", "two words", "three words here")]
    (tree,) = plan_trees(encs, "tree", row_tokens=1000)
    assert tree.members == (0, 1, 2) and tree.prefix_len == encs[0].target_mask.index(1)
    assert len(plan_trees(encs, "packed", row_tokens=1000)) == 3
    # A row too short for the three: the tree splits, each part keeping the prompt.
    split = plan_trees(encs, "tree", row_tokens=tree.prefix_len + 8)
    assert sorted(i for t in split for i in t.members) == [0, 1, 2] and len(split) > 1


def test_pack_rows_fills_rows_without_overflowing():
    sizes = [7, 3, 5, 2, 9, 4, 1, 12]
    rows = pack_rows(sizes, capacity=10)
    assert sorted(i for r in rows for i in r) == list(range(len(sizes)))
    for row in rows:
        assert sum(sizes[i] for i in row) <= 10 or len(row) == 1  # 12 alone
    assert len(rows) == 5  # 12 | 9+1 | 7+3 | 5+4 | 2


def test_engine_scores_with_the_tree_and_matches_the_reference(tiny_path, tiny):
    model, tokenizer = tiny
    engine = TransformersEngine(tiny_path, "float32", seed=0)
    assert engine.resolve_scorer() == "tree"
    assert engine.model.config._attn_implementation == "sdpa"  # switched back after the probe
    encs = _mixed_encodings(tokenizer, seed=2)
    got = engine.score(encs, max_length=512, batch_size=2)
    assert engine.model.config._attn_implementation == "sdpa"
    reference = score_encodings(model, encs, tokenizer.pad_token_id, batch_size=4)
    assert _worst(got, reference) < TOL


def test_a_soft_capped_model_is_scored_by_the_padded_path(tmp_path, tiny):
    """Gemma 2 soft-caps its logits: the head check refuses packing, auto falls back."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    _, tokenizer = tiny
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16, final_logit_softcapping=3.0,
                          pad_token_id=tokenizer.pad_token_id, attn_implementation="eager")
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    engine = TransformersEngine(str(tmp_path), "float32", seed=0)
    ok, why = supports_packing(engine.model, [5, 6, 7, 8])
    assert not ok and "output embeddings" in why
    assert engine.resolve_scorer() == "padded"
    with pytest.raises(ValueError, match="cannot score with 'tree'"):
        TransformersEngine(str(tmp_path), "float32", seed=0, scorer="tree").resolve_scorer()


SMOLLM2_135M = {  # the architecture of HuggingFaceTB/SmolLM2-135M(-Instruct)
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def test_packed_scores_equal_the_padded_path_at_smollm2_size():
    """Real depth, width, grouped-query attention and vocabulary; random weights, token ids
    drawn at random (no tokenizer needed to test the arithmetic)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M, attn_implementation="sdpa"))
    model.eval()
    rng = random.Random(0)
    encs = []
    for n, (prompt_len, response_lens, max_length) in enumerate([
            (90, [12, 30], 1024),  # prompt longer than its responses
            (20, [110, 60, 40], 1024),  # responses longer than the prompt
            (30, [50], 1024),  # N = 1
            (40, [80, 8], 72)]):  # the first response cut at max_length
        prompt = [rng.randrange(3, 49152) for _ in range(prompt_len)]
        for r in response_lens:
            ids = prompt + [rng.randrange(3, 49152) for _ in range(r)]
            mask = [0] * prompt_len + [1] * r
            cut = len(ids) > max_length
            encs.append(Encoded(ids[:max_length], mask[:max_length], truncated=cut))
        assert n < 3 or encs[-2].truncated
    reference = score_encodings(model, encs, pad_id=0, batch_size=4)
    got = score_packed(model, encs, row_tokens=400)
    assert _worst(got, reference) < TOL
