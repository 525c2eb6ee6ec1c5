"""Converting a GGUF file (llama.cpp's format) into an ordinary transformers checkpoint.

transformers reads GGUF (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package) and
dequantises the weights, but the model it returns still counts as quantised: it refuses
`save_pretrained` and carries a `quantization_config`. Its state dict, loaded into a model built
from the same config without that entry, saves as a plain float32 checkpoint (float32: every
dequantised value of the 4- and 8-bit GGUF types is exact in it, bfloat16 would round them).
The tokenizer comes from the same file, chat template and special tokens included, and is
checked after the save: the vocabulary, the template and the ids of a probe conversation are
those of the GGUF file (no token added, nothing resized).

models.resolve_model_uri calls `convert` once per file content, into the model cache.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .contract import StageInputError

log = logging.getLogger(__name__)

# Bump when the conversion changes: the cache key includes it, so old conversions are not reused.
RECIPE_VERSION = 1
SOURCE_FILE = "cream-source.json"
PROBE = [{"role": "user", "content": "What is 12 + 30? Answer: 42, e.g. naïve café 東京."},
         {"role": "assistant", "content": "The answer is 42."}]


def convert(gguf: Path, out: Path, uri: str, sha256: str) -> None:
    """Write the checkpoint of the GGUF file `gguf` into the directory `out` (it exists)."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         dtype=torch.float32)
    except (ValueError, KeyError, OSError) as exc:
        raise StageInputError(f"{uri}: transformers cannot read this GGUF file: {exc}") from exc
    if tokenizer.chat_template is None:
        raise StageInputError(f"{uri}: the GGUF file carries no chat template")
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise StageInputError(f"{uri}: the tokenizer has {len(tokenizer)} tokens but the "
                              f"embeddings only {rows} rows")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    _check_tokenizer(tokenizer, AutoTokenizer.from_pretrained(str(out)), uri)
    (out / SOURCE_FILE).write_text(json.dumps(
        {"source": uri, "file": gguf.name, "sha256": sha256, "recipe_version": RECIPE_VERSION},
        indent=2) + "\n")
    log.info("converted %s: %d parameters, %d tokens", uri, model.num_parameters(),
             len(tokenizer))


def _check_tokenizer(original, saved, uri: str) -> None:
    """The saved tokenizer is the GGUF file's: same vocabulary, template and encoding."""
    problems = []
    if saved.get_vocab() != original.get_vocab():
        problems.append("the vocabulary changed")
    if saved.chat_template != original.chat_template:
        problems.append("the chat template changed")
    for name in ("bos_token", "eos_token", "pad_token"):
        if getattr(saved, name) != getattr(original, name):
            problems.append(f"{name} changed")

    def ids(tok):
        text = tok.apply_chat_template(PROBE, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    if not problems and ids(saved) != ids(original):
        problems.append("a conversation encodes to other token ids")
    if problems:
        raise RuntimeError(f"{uri}: converting the tokenizer failed: {'; '.join(problems)}")
