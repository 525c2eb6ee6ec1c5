"""The tiny Llama-architecture model behind `builtin://tiny-llama`, built deterministically.

A byte-level BPE tokenizer is trained with `tokenizers` on the bundled text (builtin/corpus.txt and
builtin/data/*.jsonl), with its bos/eos/pad tokens and chat template defined from the start, and a
2-layer Llama with random weights from a fixed seed is saved next to it with save_pretrained, so
every stage loads it exactly like a real checkpoint. It knows nothing: it exists so the whole
pipeline runs on a CPU in minutes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"

# Bump when the recipe changes: the cache key includes it, so old caches are never reused.
RECIPE_VERSION = 1
SEED = 1234
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
MODEL_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
}
# Every turn ends with eos (so a generated answer stops at it, and scoring counts the model's
# probability of ending the turn); the generation prompt is the assistant header.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


def _corpus_files() -> list[Path]:
    return [BUILTIN_DIR / "corpus.txt", *sorted((BUILTIN_DIR / "data").glob("*.jsonl"))]


def _corpus_lines() -> list[str]:
    """Plain text of the bundled files: the corpus as is, and every string inside the JSONL."""
    lines: list[str] = []

    def strings(obj):
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, dict):
            for value in obj.values():
                yield from strings(value)
        elif isinstance(obj, list):
            for value in obj:
                yield from strings(value)

    for path in _corpus_files():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for line in text.splitlines():
                if line.strip():
                    lines.extend(strings(json.loads(line)))
        else:
            lines.extend(text.splitlines())
    return [line for line in lines if line.strip()]


def recipe_key() -> str:
    """A short digest of everything the built model depends on (the cache directory's name)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([RECIPE_VERSION, SEED, VOCAB_SIZE, SPECIAL_TOKENS, MODEL_CONFIG,
                              CHAT_TEMPLATE]).encode())
    for path in _corpus_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    # The role markers are control tokens: decoding with skip_special_tokens drops them.
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[3:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(dest: Path) -> None:
    """Build the tokenizer and the randomly initialised model into `dest` (an empty directory)."""
    import torch  # noqa: PLC0415
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
    )
    # A private generator state, so building never disturbs (or depends on) the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
