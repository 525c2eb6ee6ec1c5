"""builtin://tiny-llama: built deterministically, loaded like any checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from cream_stages import models, tiny_model


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_build_is_deterministic(tmp_path, tiny_path):
    tiny_model.build(tmp_path)
    assert _digests(tmp_path) == _digests(Path(tiny_path))


def test_it_is_a_llama_checkpoint_with_its_own_special_tokens_and_template(tiny_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert 512 <= len(tokenizer) <= 2048 and model.config.vocab_size == len(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<s>", "</s>", "<pad>")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<s><|user|>\nHi</s><|assistant|>\n"


def test_resolution_builds_into_the_cache_once(cache_dir, tiny_path):
    assert Path(tiny_path).parent == cache_dir / "models" == models.cache_dir() / "models"
    assert models.resolve_model_uri("builtin://tiny-llama") == tiny_path
    # Nothing half-built is left beside it: no temporary directory (".<name>.*"), only finished
    # models (other tests of the session may have built other builtin variants there).
    entries = [p.name for p in Path(tiny_path).parent.iterdir()]
    assert Path(tiny_path).name in entries
    assert not [e for e in entries if e.startswith(".")], entries
