"""The training loop shared by sft and dpo, and checkpoint saving.

Backends: `transformers` (one process, CPU or one GPU; plain PyTorch AdamW) and `deepspeed` (ZeRO
2/3 under torchrun, in deepspeed_backend.py). Both: constant learning rate, gradient clipping at
1.0, gradient accumulation, shuffling by a DistributedSampler seeded with the request's seed (one
replica here), so a run is deterministic given the request.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import artifacts
from .contract import TrainParams
from .errors import StageInputError
from .models import default_device, torch_dtype

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class TrainStats:
    examples: int
    steps: int
    loss_first: float
    loss_last: float


def set_seed(seed: int) -> None:
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world_size: int = 1,
                  rank: int = 0) -> list[list[int]]:
    """This rank's micro-batches (example indices) for one epoch.

    A DistributedSampler shards and shuffles (seed + epoch), padding with repeats so every rank
    runs the same number of steps (their collectives must line up).
    """
    from torch.utils.data import DistributedSampler  # noqa: PLC0415

    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def steps_per_epoch(n: int, train: TrainParams, world_size: int = 1) -> int:
    micro = math.ceil(math.ceil(n / world_size) / train.batch_size)
    return math.ceil(micro / train.gradient_accumulation)


LossFn = Callable[[object, list], "object"]  # (model, examples) -> scalar loss tensor


def train_and_save(model_path: str, tokenizer, examples: Sequence, loss_fn: LossFn,
                   train: TrainParams, seed: int, output: str, desc: str) -> TrainStats | None:
    """Train the model at model_path on `examples` and save model + tokenizer to `output`.

    Returns the stats on the process that saved (None on other ranks of a distributed run).
    """
    if not examples:
        raise ValueError("no training examples")
    if train.backend != "deepspeed" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise StageInputError("field 'train.backend': 'transformers' trains in one process; "
                              "use 'deepspeed' when launched with WORLD_SIZE > 1")
    if train.backend == "deepspeed":
        from .deepspeed_backend import train_and_save as ds_train  # noqa: PLC0415

        return ds_train(model_path, tokenizer, examples, loss_fn, train, seed, output, desc)
    return _train_and_save_torch(model_path, tokenizer, examples, loss_fn, train, seed, output,
                                 desc)


def _train_and_save_torch(model_path, tokenizer, examples, loss_fn, train: TrainParams, seed,
                          output, desc) -> TrainStats:
    import torch  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from .models import fit_threads  # noqa: PLC0415

    set_seed(seed)
    # Mixed precision: float32 master weights (AdamW on bf16 weights loses small updates), the
    # forward pass autocast to the requested precision, the checkpoint saved in it.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    device = default_device()
    model.to(device)
    fit_threads(model)
    model.train()
    dtype = torch_dtype(train.precision)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype,
                              enabled=dtype != torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=0.0)
    total = train.epochs * steps_per_epoch(len(examples), train)
    losses: list[float] = []
    with tqdm(total=total, desc=desc, unit="step") as bar:
        for epoch in range(train.epochs):
            micro = epoch_batches(len(examples), train.batch_size, seed, epoch)
            for start in range(0, len(micro), train.gradient_accumulation):
                group = micro[start:start + train.gradient_accumulation]
                step_loss = 0.0
                for idx in group:
                    with autocast:
                        loss = loss_fn(model, [examples[i] for i in idx])
                    (loss / len(group)).backward()
                    step_loss += loss.item() / len(group)
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"{desc}: the loss became {step_loss} at step "
                                             f"{len(losses) + 1}")
                losses.append(step_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
    model.eval()
    save_checkpoint(model.to(dtype), tokenizer, output)
    return TrainStats(len(examples), len(losses), losses[0], losses[-1])


def save_checkpoint(model, tokenizer, output: str, state_dict=None) -> None:
    """save_pretrained of model and tokenizer into the output directory (via a temp dir and
    upload_dir for s3://)."""
    if artifacts.is_s3(output):
        with tempfile.TemporaryDirectory(prefix="cream-ckpt-") as tmp:
            model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            artifacts.upload_dir(Path(tmp), output)
        return
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output, state_dict=state_dict)
    tokenizer.save_pretrained(output)
