"""Training a model for sft and dpo: the backend chosen in one place, the loop, the checkpoint.

Backends: `transformers` (train_torch.py: one process, CPU or one GPU) and `deepspeed`
(train_deepspeed.py: ZeRO 2/3 under torchrun). Both run train_loop.fit, so a run is the same
sequence of steps on either, deterministic given the request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from . import artifacts
from .contract import TRAIN_LOG_FILE, StageInputError, TrainParams
from .train_loop import LossFn, TrainStats, fit, set_seed, steps_per_epoch


def open_trainer(model_path: str, train: TrainParams):
    """The Trainer of the request's backend, with the model at model_path loaded."""
    if train.backend == "deepspeed":
        from .train_deepspeed import DeepSpeedTrainer  # noqa: PLC0415 - DeepSpeed where asked

        return DeepSpeedTrainer(model_path, train)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StageInputError("field 'train.backend': 'transformers' trains in one process; "
                              "use 'deepspeed' when launched with WORLD_SIZE > 1")
    from .train_torch import TorchTrainer  # noqa: PLC0415

    return TorchTrainer(model_path, train)


def train_and_save(model_path: str, tokenizer, examples: Sequence, loss_fn: LossFn,
                   train: TrainParams, seed: int, output: str, desc: str) -> TrainStats | None:
    """Train the model at model_path on `examples` and save model + tokenizer to `output`, with
    the loss of every step in TRAIN_LOG_FILE beside them.

    Returns the stats on the process that saved (None on other ranks of a distributed run).
    """
    if not examples:
        raise ValueError("no training examples")
    set_seed(seed)
    trainer = open_trainer(model_path, train)
    losses = fit(trainer, examples, loss_fn, train, seed, desc)
    if not trainer.save(tokenizer, output):
        return None
    from .records import TrainStepRecord, write  # noqa: PLC0415

    per_epoch = steps_per_epoch(len(examples), train, trainer.world_size)
    write(artifacts.join(output, TRAIN_LOG_FILE),
          (TrainStepRecord(step=i + 1, epoch=i // per_epoch, loss=loss)
           for i, loss in enumerate(losses)))
    return TrainStats(len(examples), len(losses), losses[0], losses[-1])
