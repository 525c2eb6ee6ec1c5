"""Stage `sft`: M0 -> M1 on labelled chat data, the loss on the assistant tokens only.

Every assistant turn of a conversation is a target (for the usual one-turn examples: the
response); the loss is the mean negative log-likelihood per target token of a batch. Tokenisation
and truncation are tokenization.py's, the same as score and dpo.
"""

from __future__ import annotations

import logging

from .contract import TRAIN_LOG_FILE, SftRequest, StageInputError, StageResult
from .data import load_conversations

log = logging.getLogger(__name__)


def make_loss_fn(pad_id: int):
    from .logprobs import pad_batch, token_logps  # noqa: PLC0415

    def loss_fn(model, batch):
        device = next(model.parameters()).device
        ids, attn, target = pad_batch(batch, pad_id, device)
        logps = token_logps(model, ids, attn, target)
        return -logps.sum() / target[:, 1:].sum()

    return loss_fn


def run(req: SftRequest) -> StageResult | None:
    from .models import load_tokenizer, resolve_model_uri  # noqa: PLC0415
    from .tokenization import encode_conversation  # noqa: PLC0415
    from .training import train_and_save  # noqa: PLC0415

    conversations = load_conversations(req.data)
    path = resolve_model_uri(req.model)
    tokenizer = load_tokenizer(path)
    examples = []
    for i, msgs in enumerate(conversations):
        enc = encode_conversation(tokenizer, msgs, req.train.max_length)
        if enc.n_targets == 0:
            raise StageInputError(f"{req.data}: record {i + 1}: no response token fits in "
                                  f"max_length {req.train.max_length}")
        examples.append(enc)
    truncated = sum(e.truncated for e in examples)
    if truncated:
        log.warning("%d of %d examples were truncated to max_length %d", truncated,
                    len(examples), req.train.max_length)
    log.info("SFT on %d examples, %d epoch(s)", len(examples), req.train.epochs)
    stats = train_and_save(path, tokenizer, examples, make_loss_fn(tokenizer.pad_token_id),
                           req.train, req.seed, req.output, desc="sft")
    if stats is None:
        return None
    return StageResult(
        inputs={"model": req.model, "data": req.data},
        outputs={"model": ".", "train_log": TRAIN_LOG_FILE},
        metrics={"examples": stats.examples, "steps": stats.steps,
                 "loss_first": stats.loss_first, "loss_last": stats.loss_last},
    )
