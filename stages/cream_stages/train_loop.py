"""The one training loop of sft and dpo, whatever the backend (nanoGPT's lesson: one loop for one
device and many).

A `Trainer` (train_torch.py: plain PyTorch in one process; train_deepspeed.py: DeepSpeed ZeRO 2/3
under torchrun) owns the model, the optimizer and the ranks; this loop owns the order of the work,
so both backends see the same micro-batches in the same order and step at the same boundaries:
shuffling seeded with the request's seed, gradient accumulation over groups of micro-batches
within an epoch, the loss of a step averaged over its micro-batches and the ranks, constant
learning rate, gradient clipping at 1.0.

Ranks share out micro-batches, not examples: the epoch's shuffled examples are cut into
micro-batches, and the k-th micro-batch of rank r is the epoch's micro-batch k * world_size + r
(padded with repeats so every rank runs the same number of steps). So W ranks accumulating g
micro-batches per step take exactly the steps of one process accumulating g * W: the same
micro-batches, each weighted equally, in the same order. The distributed run is the single-process
run, only split up (tests/stages/test_distributed_training.py checks it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .contract import TrainParams

MAX_GRAD_NORM = 1.0

LossFn = Callable[[Any, list], Any]  # (model, examples) -> scalar loss tensor


@dataclass(frozen=True)
class TrainStats:
    examples: int
    steps: int
    loss_first: float
    loss_last: float


class Trainer(Protocol):
    """A model being trained, on one rank of `world_size`."""

    model: Any  # what the loss function calls (a module, or a DeepSpeed engine)
    world_size: int
    rank: int

    def autocast(self) -> AbstractContextManager:
        """The context of a forward pass (mixed precision where the backend does it so)."""
        ...

    def backward(self, loss, boundary: bool) -> None:
        """Accumulate the gradients of `loss` (already scaled for accumulation); `boundary` is
        True on the last micro-batch before a step."""
        ...

    def step(self) -> None:
        """Clip at MAX_GRAD_NORM, update, zero the gradients."""
        ...

    def mean_over_ranks(self, value) -> float:
        """The mean of a scalar tensor over the ranks, as a float."""
        ...


def set_seed(seed: int) -> None:
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world_size: int = 1,
                  rank: int = 0) -> list[list[int]]:
    """This rank's micro-batches (example indices) for one epoch.

    The examples are shuffled (seed + epoch, as a DistributedSampler does), cut into micro-batches,
    and the micro-batches dealt to the ranks in turn by a DistributedSampler (padded with repeats
    so every rank runs the same number of steps: their collectives must line up).
    """
    from torch.utils.data import DistributedSampler  # noqa: PLC0415

    shuffle = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed)
    shuffle.set_epoch(epoch)
    order = list(shuffle)
    micro = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    deal = DistributedSampler(range(len(micro)), num_replicas=world_size, rank=rank,
                              shuffle=False)
    return [micro[k] for k in deal]


def steps_per_epoch(n: int, train: TrainParams, world_size: int = 1) -> int:
    micro = math.ceil(math.ceil(n / train.batch_size) / world_size)
    return math.ceil(micro / train.gradient_accumulation)


def fit(trainer: Trainer, examples: Sequence, loss_fn: LossFn, train: TrainParams, seed: int,
        desc: str) -> list[float]:
    """Train for train.epochs; returns each step's loss (mean over micro-batches and ranks)."""
    from tqdm import tqdm  # noqa: PLC0415

    if not examples:
        raise ValueError("no training examples")
    ga = train.gradient_accumulation
    total = train.epochs * steps_per_epoch(len(examples), train, trainer.world_size)
    losses: list[float] = []
    with tqdm(total=total, desc=desc, unit="step", disable=trainer.rank != 0) as bar:
        for epoch in range(train.epochs):
            micro = epoch_batches(len(examples), train.batch_size, seed, epoch,
                                  trainer.world_size, trainer.rank)
            for start in range(0, len(micro), ga):
                group = micro[start:start + ga]
                step_loss = 0.0
                for i, idx in enumerate(group):
                    with trainer.autocast():
                        loss = loss_fn(trainer.model, [examples[j] for j in idx])
                    trainer.backward(loss / len(group), boundary=i == len(group) - 1)
                    step_loss = step_loss + loss.detach().float() / len(group)
                trainer.step()
                value = trainer.mean_over_ranks(step_loss)
                if not math.isfinite(value):
                    raise FloatingPointError(f"{desc}: the loss became {value} at step "
                                             f"{len(losses) + 1}")
                losses.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
    return losses
