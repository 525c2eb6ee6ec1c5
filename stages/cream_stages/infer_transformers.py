"""The transformers inference backend: generation and scoring on the CPU or one GPU.

Generation batches prompts with left padding (generation appends on the right) and decodes only
the new tokens; sampling is deterministic given the seed and the batches (the generator is seeded
at each batch from the seed and the batch's first prompt id, so a batch samples the same in any
process and in any order: engine_pool.py relies on it).

Scoring on the CPU is packed_logprobs.py's prefix-shared packing (each prompt computed once,
no padding, chunked log-softmax), the fastest there by measurement (bench/RESULTS.md); the
padded, length-sorted path of logprobs.py is the reference it is tested against, and what a
model that cannot be packed (see packed_logprobs.supports_packing) or a GPU uses: no GPU has
measured the two yet, and this backend's GPU scoring is vLLM's job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm import tqdm
from transformers import GenerationConfig

from .logprobs import score_encodings
from .models import load_model
from .packed_logprobs import score_packed, supports_packing
from .seeds import request_seed
from .tokenization import prompt_text, render

log = logging.getLogger(__name__)

SCORERS = ("auto", "tree", "packed", "padded")


class TransformersEngine:
    """`scorer`: "auto" (the measured default: "tree" on the CPU where the model supports it,
    else "padded"), or one of "tree", "packed", "padded" (logprobs.py's reference)."""

    def __init__(self, model: str, precision: str, seed: int, scorer: str = "auto"):
        if scorer not in SCORERS:
            raise ValueError(f"unknown scorer {scorer!r} (known: {', '.join(SCORERS)})")
        self.model, self.tokenizer, self.path = load_model(model, precision)
        self.seed = seed
        self.scorer = scorer
        self._resolved: str | None = None

    def resolve_scorer(self) -> str:
        """The scorer this engine uses: decided once (checking the model costs a forward)."""
        if self._resolved is None:
            wanted = self.scorer
            if wanted == "auto":
                wanted = "tree" if self.model.device.type == "cpu" else "padded"
            if wanted != "padded":
                probe = self.tokenizer("a probe of the model's head", add_special_tokens=False)[
                    "input_ids"]
                ok, why = supports_packing(self.model, probe)
                if not ok:
                    if self.scorer != "auto":
                        raise ValueError(f"{self.path}: cannot score with {wanted!r}: {why}")
                    log.warning("%s: scoring with the padded path: %s", self.path, why)
                    wanted = "padded"
            self._resolved = wanted
            log.info("scorer: %s", wanted)
        return self._resolved

    @property
    def scores_by_prompt(self) -> bool:
        """Whether score() computes a prompt once for all its responses in a call (the tree):
        engine_pool.py then keeps a prompt's responses in one batch."""
        return self.resolve_scorer() == "tree"

    def generate(self, prompts: Sequence[str], keys: Sequence[str], *, n: int = 1,
                 sample: bool, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int,
                 batch_size: int, desc: str = "generate") -> list[list[str]]:
        return generate(self.model, self.tokenizer, list(prompts), list(keys), n=n, sample=sample,
                        temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                        batch_size=batch_size, seed=self.seed, desc=desc)

    def score(self, encodings: Sequence, *, max_length: int, batch_size: int,
              desc: str = "score") -> list[float]:
        scorer = self.resolve_scorer()
        if scorer == "padded":
            return score_encodings(self.model, list(encodings), self.tokenizer.pad_token_id,
                                   batch_size, self.model.device, desc=desc)
        # A row holds what a padded batch of batch_size x max_length held: the same memory.
        return score_packed(self.model, list(encodings), layout=scorer,
                            row_tokens=batch_size * max_length, device=self.model.device,
                            desc=desc)

    def lm_eval_model(self, batch_size: int):
        from lm_eval.models.huggingface import HFLM  # noqa: PLC0415 - only when asked

        # The loaded model itself: lm-eval evaluates exactly what the other tasks see.
        return HFLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=batch_size)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str | list[dict]], keys: list[str] | None = None,
             *, n: int = 1, sample: bool, temperature: float = 1.0, top_p: float = 1.0,
             max_tokens: int, batch_size: int, seed: int = 0,
             desc: str = "generate") -> list[list[str]]:
    """n completions for each user prompt (chat template applied), in prompt order; a prompt
    may also be a conversation (a list of turns), answered as its next assistant turn. `keys`
    name the prompts (default: their positions) and seed each batch."""
    keys = keys if keys is not None else [str(i) for i in range(len(prompts))]
    tokenizer.padding_side = "left"
    texts = [prompt_text(tokenizer, p) if isinstance(p, str)
             else render(tokenizer, p, add_generation_prompt=True) for p in prompts]
    # A fresh generation config: the request alone defines decoding, not the checkpoint's
    # defaults (a repetition penalty or top-k there would make this path differ from vLLM's).
    # Only the stop tokens come from the model (Llama-3 stops at two).
    config = GenerationConfig(
        max_new_tokens=max_tokens, num_return_sequences=n, do_sample=sample,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        bos_token_id=model.generation_config.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        # Explicit neutral values: generate() fills only unset (None) fields from the model's.
        num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
        temperature=temperature if sample else 1.0, top_p=top_p if sample else 1.0,
        top_k=0 if sample else None,
    )
    out: list[list[str]] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        torch.manual_seed(request_seed(seed, keys[start]))
        enc = tokenizer(texts[start:start + batch_size], add_special_tokens=False, padding=True,
                        return_tensors="pt").to(model.device)
        generated = model.generate(**enc, generation_config=config)[
            :, enc["input_ids"].shape[1]:]
        decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
        out.extend(decoded[i:i + n] for i in range(0, len(decoded), n))
    return out
