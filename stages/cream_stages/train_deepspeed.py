"""The `deepspeed` training backend: ZeRO 2/3 for sft and dpo under torchrun, on GPUs or on the CPU
(deepspeed is imported inside functions, so this module imports anywhere).

The operator launches the stage under torchrun, so every rank runs with WORLD_SIZE, RANK and
LOCAL_RANK set; a stage started without torchrun is a world of one. The loop (train_loop.py) marks
the last micro-batch of each accumulation group, so DeepSpeed steps exactly where the
single-process backend does, on losses the loop has already scaled. Rank 0 saves the checkpoint,
with ZeRO-3's parameters gathered from all ranks first (a collective every rank must join).

What the CPU needs that a GPU does not is decided in one place, `placement()`:
- DeepSpeed's accelerator is `cpu` (DS_ACCELERATOR, set before deepspeed is imported), whose
  collectives use gloo when Intel's oneCCL bindings are absent; on GPUs, `cuda` and NCCL.
- `torch.cuda.set_device` only with CUDA.
- The optimizer: on GPUs DeepSpeed's AdamW (its FusedAdam op, compiled just in time); on the CPU
  torch's AdamW through DeepSpeed's `torch_adam` switch, which needs no C++ op (no compiler, no
  build at start-up) and is the very update of the single-process backend, so the two agree.
- DeepSpeed's CPU backend compiles a shared-memory all-reduce op (deepspeed_shm_comm) when it
  starts; only tensor-parallel inference uses it, never ZeRO training, and compiling it costs
  minutes per Pod: it is marked unavailable, so collectives are plain gloo ones.
- Precision is the request's on both (float32, bfloat16, float16 as DeepSpeed supports them).

Dropout is off while training (models.load_for_training) and restored in the saved config.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass

from .contract import TrainParams
from .models import fit_threads, load_for_training, restore_dropout, save_checkpoint, torch_dtype
from .train_loop import MAX_GRAD_NORM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where a DeepSpeed run executes, and what follows from it."""

    accelerator: str  # DeepSpeed's accelerator (DS_ACCELERATOR): "cuda" or "cpu"
    collectives: str  # torch.distributed backend: "nccl" or "gloo"
    set_cuda_device: bool  # torch.cuda.set_device(LOCAL_RANK) before the process group
    torch_adam: bool  # torch.optim.AdamW instead of DeepSpeed's compiled FusedAdam
    skip_ops: tuple[str, ...]  # DeepSpeed ops training does not use, never compiled here


def placement(cuda: bool) -> Placement:
    """The one place the CPU path differs from the GPU path (see the module docstring)."""
    if cuda:
        return Placement("cuda", "nccl", set_cuda_device=True, torch_adam=False, skip_ops=())
    return Placement("cpu", "gloo", set_cuda_device=False, torch_adam=True,
                     skip_ops=("deepspeed_shm_comm",))


def dist_env() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) from torchrun's environment."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def single_process_env(port: int) -> dict[str, str]:
    """torchrun's variables for a world of one (a stage started without torchrun), so DeepSpeed
    initialises from the environment instead of looking for MPI."""
    return {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def deepspeed_config(train: TrainParams, world_size: int, where: Placement | None = None) -> dict:
    """The DeepSpeed config of a request's training parameters (on GPUs unless `where` says)."""
    where = where or placement(cuda=True)
    zero: dict = {
        "stage": train.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e8,
    }
    if train.zero_stage == 3:
        # Lets rank 0 gather the full weights to save an ordinary HF checkpoint.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    adam = {"lr": train.learning_rate, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    if where.torch_adam:
        adam["torch_adam"] = True
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation,
        "train_batch_size": train.batch_size * train.gradient_accumulation * world_size,
        "gradient_clipping": MAX_GRAD_NORM,
        "optimizer": {"type": "AdamW", "params": adam},
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bfloat16"},
        "fp16": {"enabled": train.precision == "float16"},
        "steps_per_print": 2**31 - 1,  # our progress bar reports instead
        "wall_clock_breakdown": False,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeepSpeedTrainer:
    def __init__(self, model_path: str, train: TrainParams):
        import torch  # noqa: PLC0415

        self.where = placement(torch.cuda.is_available())
        # DeepSpeed picks its accelerator once, when first imported: say which before that.
        # (transformers may have imported it already, through accelerate's save_pretrained
        # helpers: its own detection then chose, by the same rule, which is checked below.)
        os.environ.setdefault("DS_ACCELERATOR", self.where.accelerator)
        if "WORLD_SIZE" not in os.environ:
            os.environ.update(single_process_env(_free_port()))
        import deepspeed  # noqa: PLC0415
        import deepspeed.ops  # noqa: PLC0415
        from deepspeed.accelerator import get_accelerator  # noqa: PLC0415
        from transformers.integrations import HfDeepSpeedConfig  # noqa: PLC0415

        chosen = get_accelerator().device_name()
        if chosen != self.where.accelerator:
            raise RuntimeError(f"DeepSpeed chose its {chosen!r} accelerator but this run needs "
                               f"{self.where.accelerator!r}: set DS_ACCELERATOR="
                               f"{self.where.accelerator}")

        self.world_size, self.rank, local_rank = dist_env()
        if self.where.set_cuda_device:
            torch.cuda.set_device(local_rank)
        for op in self.where.skip_ops:  # DeepSpeed builds only the ops this table calls usable
            deepspeed.ops.__compatible_ops__[op] = False
        deepspeed.init_distributed(dist_backend=self.where.collectives)
        self.zero_stage = train.zero_stage
        config = deepspeed_config(train, self.world_size, self.where)
        # Must exist before from_pretrained so ZeRO-3 loads the weights already partitioned.
        self._hf_ds_config = HfDeepSpeedConfig(config)
        model, self.dropout = load_for_training(model_path, torch_dtype(train.precision))
        if not self.where.set_cuda_device:
            fit_threads(model)  # ranks share the cores: one thread each for a small model
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
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)  # gloo has no AVG
        return float(tensor.item()) / self.world_size

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
