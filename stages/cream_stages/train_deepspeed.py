"""DeepSpeed ZeRO training for sft and dpo (GPU only; deepspeed is imported inside functions).

The operator launches the stage under torchrun, so every rank runs this with WORLD_SIZE, RANK and
LOCAL_RANK set. Each rank trains on its DistributedSampler shard; rank 0 saves the checkpoint, with
ZeRO-3's parameters gathered from all ranks first (a collective every rank must join).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

from .contract import TrainParams
from .training import (
    MAX_GRAD_NORM,
    TrainStats,
    epoch_batches,
    save_checkpoint,
    set_seed,
    steps_per_epoch,
)

log = logging.getLogger(__name__)


def dist_env() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's environment."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def deepspeed_config(train: TrainParams, world_size: int) -> dict:
    """The DeepSpeed config of a request's training parameters."""
    zero: dict = {
        "stage": train.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e8,
    }
    if train.zero_stage == 3:
        # Lets rank 0 gather the full weights to save an ordinary HF checkpoint.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation,
        "train_batch_size": train.batch_size * train.gradient_accumulation * world_size,
        "gradient_clipping": MAX_GRAD_NORM,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": train.learning_rate, "betas": [0.9, 0.999], "eps": 1e-8,
                       "weight_decay": 0.0},
        },
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bfloat16"},
        "fp16": {"enabled": train.precision == "float16"},
        "steps_per_print": 2**31 - 1,  # our progress bar reports instead
        "wall_clock_breakdown": False,
    }


def train_and_save(model_path: str, tokenizer, examples: Sequence, loss_fn, train: TrainParams,
                   seed: int, output: str, desc: str) -> TrainStats | None:
    import deepspeed  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415
    from transformers.integrations import HfDeepSpeedConfig  # noqa: PLC0415

    from .models import torch_dtype  # noqa: PLC0415

    world_size, rank, local_rank = dist_env()
    torch.cuda.set_device(local_rank)
    deepspeed.init_distributed()
    set_seed(seed)
    config = deepspeed_config(train, world_size)
    # Must exist before from_pretrained so ZeRO-3 loads the weights already partitioned.
    hf_ds_config = HfDeepSpeedConfig(config)  # noqa: F841 - kept alive on purpose
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(train.precision))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=config)
    engine.train()
    total = train.epochs * steps_per_epoch(len(examples), train, world_size)
    losses: list[float] = []
    step_loss = torch.zeros((), device=engine.device)
    with tqdm(total=total, desc=desc, unit="step", disable=rank != 0) as bar:
        for epoch in range(train.epochs):
            for idx in epoch_batches(len(examples), train.batch_size, seed, epoch, world_size,
                                     rank):
                loss = loss_fn(engine, [examples[j] for j in idx])
                engine.backward(loss)  # DeepSpeed scales by 1/gradient_accumulation itself
                # DeepSpeed counts micro-steps globally: an epoch's trailing partial group of
                # gradient accumulation completes with the next epoch's first micro-batches.
                boundary = engine.is_gradient_accumulation_boundary()
                engine.step()
                step_loss += loss.detach().float() / train.gradient_accumulation
                if boundary:
                    dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
                    value = step_loss.item()
                    if not math.isfinite(value):
                        raise FloatingPointError(f"{desc}: the loss became {value}")
                    losses.append(value)
                    step_loss.zero_()
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
    if not losses:
        raise ValueError(f"{desc}: fewer micro-batches than one gradient accumulation step")
    engine.eval()
    # ZeRO-3 holds a shard per rank: gathering the full weights is a collective (every rank).
    zero3 = train.zero_stage == 3
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero3 else None
    if rank == 0:
        save_checkpoint(engine.module, tokenizer, output, state_dict=state_dict)
    dist.barrier()
    if rank != 0:
        return None
    return TrainStats(len(examples), len(losses), losses[0], losses[-1])
