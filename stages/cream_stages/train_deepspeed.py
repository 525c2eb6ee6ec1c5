"""The `deepspeed` training backend: ZeRO 2/3 for sft and dpo under torchrun (deepspeed is
imported inside functions, so this module imports anywhere).

The operator launches the stage under torchrun, so every rank runs with WORLD_SIZE, RANK and
LOCAL_RANK set. The loop (train_loop.py) marks the last micro-batch of each accumulation group, so
DeepSpeed steps exactly where the single-process backend does, on losses the loop has already
scaled. Rank 0 saves the checkpoint, with ZeRO-3's parameters gathered from all ranks first (a
collective every rank must join). Dropout is off (models.load_for_training).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

from .contract import TrainParams
from .models import load_for_training, restore_dropout, save_checkpoint, torch_dtype
from .train_loop import MAX_GRAD_NORM

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


class DeepSpeedTrainer:
    def __init__(self, model_path: str, train: TrainParams):
        import deepspeed  # noqa: PLC0415
        import torch  # noqa: PLC0415
        from transformers.integrations import HfDeepSpeedConfig  # noqa: PLC0415

        self.world_size, self.rank, local_rank = dist_env()
        torch.cuda.set_device(local_rank)
        deepspeed.init_distributed()
        self.zero_stage = train.zero_stage
        config = deepspeed_config(train, self.world_size)
        # Must exist before from_pretrained so ZeRO-3 loads the weights already partitioned.
        self._hf_ds_config = HfDeepSpeedConfig(config)
        model, self.dropout = load_for_training(model_path, torch_dtype(train.precision))
        self.model, _, _, _ = deepspeed.initialize(model=model,
                                                   model_parameters=model.parameters(),
                                                   config=config)
        self.model.train()

    def autocast(self):
        return nullcontext()  # DeepSpeed's bf16/fp16 config sets the precision

    def backward(self, loss, boundary: bool) -> None:
        self.model.set_gradient_accumulation_boundary(boundary)
        self.model.backward(loss, scale_wrt_gas=False)  # the loop has scaled it

    def step(self) -> None:
        self.model.step()  # clips (gradient_clipping) and zeroes at the boundary

    def mean_over_ranks(self, value) -> float:
        import torch  # noqa: PLC0415
        import torch.distributed as dist  # noqa: PLC0415

        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.model.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.AVG)
        return float(tensor.item())

    def save(self, tokenizer, output: str) -> bool:
        """Rank 0 saves; every rank joins ZeRO-3's gather. True on the rank that saved."""
        import torch.distributed as dist  # noqa: PLC0415

        self.model.eval()
        zero3 = self.zero_stage == 3
        state_dict = self.model._zero3_consolidated_16bit_state_dict() if zero3 else None
        if self.rank == 0:
            restore_dropout(self.model.module.config, self.dropout)
            save_checkpoint(self.model.module, tokenizer, output, state_dict=state_dict)
        dist.barrier()
        return self.rank == 0
