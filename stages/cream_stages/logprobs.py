"""s_M(x, y): the summed log-probability of the response tokens, batched and padding-proof.

Right padding: a real token only attends to earlier real tokens, so pads change nothing but the
shapes; the sum is taken with `where`, so whatever a pad position computes never leaks in.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .tokenization import Encoded


def pad_batch(encodings: list[Encoded], pad_id: int, device=None):
    """(input_ids, attention_mask, target_mask) right-padded to the longest sequence."""
    width = max(len(e.input_ids) for e in encodings)
    ids = torch.full((len(encodings), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(encodings), width), dtype=torch.long)
    target = torch.zeros((len(encodings), width), dtype=torch.bool)
    for i, enc in enumerate(encodings):
        n = len(enc.input_ids)
        ids[i, :n] = torch.tensor(enc.input_ids)
        attn[i, :n] = 1
        target[i, :n] = torch.tensor(enc.target_mask, dtype=torch.bool)
    return ids.to(device), attn.to(device), target.to(device)


def token_logps(model, input_ids, attention_mask, target_mask) -> torch.Tensor:
    """log p(token | prefix) at the target tokens, 0 elsewhere (float32, [batch, len - 1]).

    Position j holds the log-prob of token j + 1: the first token is never a target (nothing
    predicts it).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return torch.where(target_mask[:, 1:], logps, 0.0)


def sequence_logps(model, input_ids, attention_mask, target_mask,
                   dtype=torch.float32) -> torch.Tensor:
    """Per-sequence sum of log p(token | prefix) over the target tokens ([batch]), accumulated
    in `dtype`: scores ask for float64, since float32 cannot hold a long response's sum to 1e-4
    nats (an ulp of -7000 is 5e-4), while the float32 token log-probs are exact enough."""
    return token_logps(model, input_ids, attention_mask, target_mask).to(dtype).sum(-1)


@torch.no_grad()
def score_encodings(model, encodings: list[Encoded], pad_id: int, batch_size: int,
                    device=None, desc: str = "score") -> list[float]:
    """sequence_logps of each encoding, in input order; batches group similar lengths."""
    order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].input_ids))
    out = [0.0] * len(encodings)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start:start + batch_size]
        batch = pad_batch([encodings[i] for i in idx], pad_id, device)
        logps = sequence_logps(model, *batch, dtype=torch.float64)
        for i, value in zip(idx, logps.tolist(), strict=True):
            out[i] = value
    return out
