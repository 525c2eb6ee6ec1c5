"""Stage `dpo`: M_t -> M_{t+1} with CREAM's consistency-weighted DPO loss (losses.py).

The reference model is M_t, whose log-probs of every chosen and rejected response score already
computed: they come from the pairs file, so no reference model is loaded. The pairs are tokenised
with tokenization.py exactly as score did; a token count that differs from score's (another
max_length, another tokenizer) fails the stage instead of silently training on a wrong reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .contract import TRAIN_LOG_FILE, DpoRequest, StageInputError, StageResult
from .records import PairRecord, read

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DpoExample:
    chosen: object  # Encoded
    rejected: object  # Encoded
    ref_chosen: float
    ref_rejected: float
    weight: float


def encode_pairs(tokenizer, pairs: list[PairRecord], max_length: int,
                 uri: str) -> list[DpoExample]:
    from .tokenization import encode_pair  # noqa: PLC0415

    out = []
    for pair in pairs:
        chosen = encode_pair(tokenizer, pair.prompt, pair.chosen, max_length)
        rejected = encode_pair(tokenizer, pair.prompt, pair.rejected, max_length)
        for name, enc, recorded in (("chosen", chosen, pair.ref_chosen_length),
                                    ("rejected", rejected, pair.ref_rejected_length)):
            if enc.n_targets != recorded:
                raise StageInputError(
                    f"{uri}: prompt_id {pair.prompt_id}: the {name} response has {enc.n_targets} "
                    f"tokens under max_length {max_length} but score counted {recorded}: score "
                    "and dpo must use the same model and max_length, or the reference log-probs "
                    "do not match"
                )
        out.append(DpoExample(chosen, rejected, pair.ref_chosen_logp, pair.ref_rejected_logp,
                              pair.weight))
    return out


@dataclass
class RewardStats:
    """TRL's rewards/margins and rewards/accuracies summed over every training micro-batch this
    process saw (z = dpo_margins; the means are what the manifest reports)."""

    pairs: int = 0
    margin_sum: float = 0.0
    correct: int = 0

    def add(self, z) -> None:
        self.pairs += int(z.numel())
        self.margin_sum += float(z.sum())
        self.correct += int((z > 0).sum())

    def metrics(self) -> dict:
        if not self.pairs:
            return {}
        return {"reward_margin": self.margin_sum / self.pairs,
                "reward_accuracy": self.correct / self.pairs}


def make_loss_fn(pad_id: int, beta: float, layout: str = "tree",
                 stats: RewardStats | None = None):
    """The loss of a micro-batch. layout "tree": chosen and rejected share their prompt's
    forward pass, packed without padding (packed_logprobs.sequence_logps_packed), where the
    model's attention is pluggable; "padded": logprobs.py's padded batch. Both give the same
    loss and gradients (tests/stages/test_packed_dpo.py). `stats` collects the reward margins
    of the pairs trained on."""
    import torch  # noqa: PLC0415

    from .logprobs import pad_batch, sequence_logps  # noqa: PLC0415
    from .losses import cream_dpo_loss, dpo_margins  # noqa: PLC0415
    from .packed_logprobs import sequence_logps_packed  # noqa: PLC0415
    from .tree_attention import supports_tree_attention  # noqa: PLC0415

    def loss_fn(model, batch: list[DpoExample]):
        device = next(model.parameters()).device
        # Chosen and rejected in one forward pass.
        encs = [ex.chosen for ex in batch] + [ex.rejected for ex in batch]
        if layout == "tree" and supports_tree_attention(getattr(model, "module", model)):
            logps = sequence_logps_packed(model, encs)
        else:
            logps = sequence_logps(model, *pad_batch(encs, pad_id, device),
                                   dtype=torch.float64)
        n = len(batch)

        # float64 like the scores themselves: s_theta - s_ref is a small difference of two
        # large sums (a float32 ulp of -700 is 6e-5 nats), and at the start s_theta == s_ref.
        def col(name):
            return torch.tensor([getattr(ex, name) for ex in batch], dtype=torch.float64,
                                device=device)

        ref_chosen, ref_rejected = col("ref_chosen"), col("ref_rejected")
        losses = cream_dpo_loss(logps[:n], logps[n:], ref_chosen, ref_rejected, col("weight"),
                                beta)
        if stats is not None:
            with torch.no_grad():
                stats.add(dpo_margins(logps[:n], logps[n:], ref_chosen, ref_rejected, beta))
        return losses.mean().float()

    return loss_fn


def run(req: DpoRequest) -> StageResult | None:
    from .models import load_tokenizer, resolve_model_uri  # noqa: PLC0415
    from .training import train_and_save  # noqa: PLC0415

    pairs = read(req.pairs, PairRecord)
    if not pairs:
        raise StageInputError(f"{req.pairs}: no preference pairs")
    path = resolve_model_uri(req.model)
    tokenizer = load_tokenizer(path)
    examples = encode_pairs(tokenizer, pairs, req.train.max_length, req.pairs)
    log.info("DPO on %d pairs, beta %s, %d epoch(s)", len(examples), req.beta, req.train.epochs)
    rewards = RewardStats()
    stats = train_and_save(path, tokenizer, examples,
                           make_loss_fn(tokenizer.pad_token_id, req.beta, stats=rewards),
                           req.train, req.seed, req.output, desc="dpo")
    if stats is None:
        return None
    return StageResult(
        inputs={"model": req.model, "pairs": req.pairs},
        outputs={"model": ".", "train_log": TRAIN_LOG_FILE},
        metrics={"pairs": stats.examples, "steps": stats.steps, "loss_first": stats.loss_first,
                 "loss_last": stats.loss_last,
                 # Over training, on this process's micro-batches (every pair on one process).
                 **rewards.metrics()},
    )
