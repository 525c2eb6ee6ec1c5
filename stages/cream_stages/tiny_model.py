"""The tiny Llama-architecture models behind `builtin://tiny-llama` (and its reward models
`builtin://tiny-reward`, classic, and `builtin://tiny-cloud`, Critique-out-Loud), built
deterministically.

A byte-level BPE tokenizer is trained with `tokenizers` on the bundled text (builtin/corpus.txt and
builtin/data/*.jsonl), with its bos/eos/pad tokens and chat template defined from the start, and a
2-layer Llama with random weights from a fixed seed is saved next to it with save_pretrained, so
every stage loads it exactly like a real checkpoint. It knows nothing: it exists so the whole
pipeline runs on a CPU in minutes. The reward models share its tokenizer and shape: a scalar
head on it (LlamaForSequenceClassification), and for CLoud a causal LM with a reward head file
beside it (reward_models.py), each from its own seed.
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
# The builtin models: name -> (architecture, seed offset). The reward models' seeds differ from
# the policy's, so a tiny reward model is not the tiny policy's own judgement.
VARIANTS = {"tiny-llama": ("causal", 0), "tiny-reward": ("classic", 1),
            "tiny-cloud": ("cloud", 2)}
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
                              CHAT_TEMPLATE, VARIANTS]).encode())
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


def build(dest: Path, name: str = "tiny-llama") -> None:
    """Build the tokenizer and the randomly initialised model `name` (one of VARIANTS) into
    `dest` (an empty directory)."""
    import torch  # noqa: PLC0415
    from transformers import (  # noqa: PLC0415
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    kind, offset = VARIANTS[name]
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
        **({"num_labels": 1} if kind == "classic" else {}),
    )
    # A private generator state, so building never disturbs (or depends on) the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + offset)
        if kind == "classic":
            model = LlamaForSequenceClassification(config)
        else:
            model = LlamaForCausalLM(config)
        if kind == "cloud":
            from .cloud_head import save_cloud_head  # noqa: PLC0415

            # std 0.5: over the tiny model's hidden states the rewards spread enough to rank.
            head = torch.nn.Linear(config.hidden_size, 1)
            torch.nn.init.normal_(head.weight, std=0.5)
            dest.mkdir(parents=True, exist_ok=True)
            save_cloud_head(head, dest)
    if kind != "classic":
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
