"""Text generation with transformers (the CPU backend of sample and evaluate).

Prompts are batched with left padding (generation appends on the right); only the new tokens are
decoded. Sampling is deterministic given the seed and the batch size: the generator is seeded once
and the batches always run in the same order.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .tokenization import prompt_text


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, n: int = 1, sample: bool,
             temperature: float = 1.0, top_p: float = 1.0, max_tokens: int, batch_size: int,
             seed: int = 0, desc: str = "generate") -> list[list[str]]:
    """n completions for each user prompt (chat template applied), in prompt order."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    texts = [prompt_text(tokenizer, p) for p in prompts]
    device = model.device
    options = dict(max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id,
                   num_return_sequences=n)
    if sample:
        # top_k=0 switches off the model's own top-k, so temperature/top_p mean what vLLM's do.
        options.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    out: list[list[str]] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        enc = tokenizer(texts[start:start + batch_size], add_special_tokens=False, padding=True,
                        return_tensors="pt").to(device)
        generated = model.generate(**enc, **options)[:, enc["input_ids"].shape[1]:]
        decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
        out.extend(decoded[i:i + n] for i in range(0, len(decoded), n))
    return out
