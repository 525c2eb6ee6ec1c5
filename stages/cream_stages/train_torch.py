"""The `transformers` training backend: plain PyTorch AdamW in one process (CPU or one GPU).

Mixed precision: float32 master weights (AdamW on bf16 weights loses small updates), the forward
pass autocast to the requested precision, the checkpoint saved in it. Dropout is off
(models.load_for_training).
"""

from __future__ import annotations

import torch

from .contract import TrainParams
from .models import (
    default_device,
    fit_threads,
    load_for_training,
    restore_dropout,
    save_checkpoint,
    torch_dtype,
)
from .train_loop import MAX_GRAD_NORM


class TorchTrainer:
    world_size = 1
    rank = 0

    def __init__(self, model_path: str, train: TrainParams):
        self.model, self.dropout = load_for_training(model_path, torch.float32)
        self.device = default_device()
        self.model.to(self.device)
        fit_threads(self.model)
        self.model.train()
        self.dtype = torch_dtype(train.precision)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train.learning_rate,
                                           weight_decay=0.0)

    def autocast(self):
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.dtype,
                              enabled=self.dtype != torch.float32)

    def backward(self, loss, boundary: bool) -> None:
        loss.backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def mean_over_ranks(self, value) -> float:
        return float(value)

    def save(self, tokenizer, output: str) -> bool:
        """Save model and tokenizer; True (this process is the one that saves)."""
        self.model.eval()
        restore_dropout(self.model.config, self.dropout)
        save_checkpoint(self.model.to(self.dtype), tokenizer, output)
        return True
