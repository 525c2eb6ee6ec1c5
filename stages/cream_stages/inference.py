"""Inference backends as peers: one interface (generate, score), chosen in one place.

sample, score and evaluate open an `Engine` for a model and call it; they never branch on the
backend. `transformers` runs anywhere (the CPU path and the reference), `vllm` on a GPU. Within
one iteration every score must come from the same backend and precision (consistency checks it):
their log-probs differ slightly, enough to flip near-tied rankings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .contract import InferenceBackend


class Engine(Protocol):
    """A model loaded for inference. Prompts are user turns: the engine applies the chat
    template. `keys` name the prompts (their ids): a backend that seeds per prompt uses them."""

    tokenizer: Any

    def generate(self, prompts: Sequence[str], keys: Sequence[str], *, n: int = 1,
                 sample: bool, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int,
                 batch_size: int, desc: str = "generate") -> list[list[str]]:
        """n completions per prompt, in prompt order."""
        ...

    def score(self, encodings: Sequence, *, max_length: int, batch_size: int,
              desc: str = "score") -> list[float]:
        """s_M of each tokenised conversation (tokenization.Encoded), in input order."""
        ...

    def lm_eval_model(self, batch_size: int) -> Any:
        """The same model as an lm-evaluation-harness LM (lm_harness.py)."""
        ...


def open_engine(backend: InferenceBackend, model: str, precision: str, seed: int,
                tensor_parallel: int = 1) -> Engine:
    """The engine of `backend` for the model URI `model` (resolved and loaded here), over
    `tensor_parallel` devices (vLLM only: the transformers backend runs on one)."""
    if backend == "vllm":
        from .infer_vllm import VllmEngine  # noqa: PLC0415 - vLLM only where asked for

        return VllmEngine(model, precision, seed, tensor_parallel)
    if tensor_parallel != 1:
        raise ValueError(f"tensor_parallel {tensor_parallel} needs the vllm backend, not "
                         f"{backend!r}")
    if backend == "transformers":
        from .infer_transformers import TransformersEngine  # noqa: PLC0415

        return TransformersEngine(model, precision, seed)
    raise ValueError(f"unknown inference backend {backend!r}")
