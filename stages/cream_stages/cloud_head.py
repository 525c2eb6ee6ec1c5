"""The reward head of a Critique-out-Loud reward model, on disk: CLOUD_HEAD_FILE beside an ordinary
causal-LM checkpoint, a safetensors file holding `weight` [1, hidden] and `bias` [1] of a
torch.nn.Linear(hidden, 1). Its own module: the reward stage reads it, the tiny CLoud model's
builder writes it (tiny_model.py), and neither depends on the other.
"""

from __future__ import annotations

from pathlib import Path

from .contract import StageInputError

CLOUD_HEAD_FILE = "reward_head.safetensors"


def save_cloud_head(head, directory: Path) -> None:
    """Write a reward head (torch.nn.Linear(hidden, 1)) beside a causal-LM checkpoint."""
    from safetensors.torch import save_file  # noqa: PLC0415

    save_file({"weight": head.weight.detach().contiguous(),
               "bias": head.bias.detach().contiguous()}, str(directory / CLOUD_HEAD_FILE))


def load_cloud_head(path: Path, hidden: int, dtype, device):
    """The reward head of the checkpoint in `path`, checked against the model's hidden size."""
    import torch  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    file = path / CLOUD_HEAD_FILE
    if not file.is_file():
        raise StageInputError(f"{path}: not a CLoud reward model: no {CLOUD_HEAD_FILE} (its "
                              "reward head, weight [1, hidden] and bias [1]) beside the model")
    tensors = load_file(str(file))
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or tuple(weight.shape) != (1, hidden) \
            or tuple(bias.shape) != (1,):
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        raise StageInputError(f"{file}: expected weight [1, {hidden}] and bias [1], found "
                              f"{shapes}")
    head = torch.nn.Linear(hidden, 1, dtype=dtype, device=device)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.eval()
