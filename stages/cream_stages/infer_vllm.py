"""The vLLM inference backend: sample, score and evaluate on a GPU (vllm is imported inside
functions, so this module imports anywhere).

Scoring uses prompt log-probs: the whole tokenised conversation is the prompt, one token is
generated, and the log-prob vLLM reports for each actual prompt token is summed over the response
positions, with the same tokenisation as the transformers path (tokenization.py). Such requests
bypass the prefix cache and their logits memory is not budgeted at start-up, so they go in chunks
of bounded total tokens. vLLM's and transformers' log-probs differ slightly: within one
iteration, every score must come from the same backend and precision (consistency checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .models import load_tokenizer, resolve_model_uri
from .seeds import request_seed
from .tokenization import Encoded, prompt_text

log = logging.getLogger(__name__)


def sampling_kwargs(*, n: int, temperature: float, top_p: float, max_tokens: int,
                    seed: int | None) -> dict:
    """SamplingParams arguments of a sample request (top_k=-1: off, as in the CPU path)."""
    return {"n": n, "temperature": temperature, "top_p": top_p, "top_k": -1,
            "max_tokens": max_tokens, "seed": seed}


def greedy_kwargs(max_tokens: int) -> dict:
    return {"n": 1, "temperature": 0.0, "max_tokens": max_tokens}


def scoring_kwargs() -> dict:
    """prompt_logprobs=0: the log-prob of each actual prompt token (the raw model log-probs,
    before any sampling transform); one throwaway generated token."""
    return {"n": 1, "temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 0}


def token_chunks(lengths: Sequence[int], max_tokens: int, max_requests: int) -> list[list[int]]:
    """Consecutive index chunks of at most max_requests requests and max_tokens tokens (a single
    request longer than max_tokens gets a chunk of its own)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and (used + n > max_tokens or len(current) >= max_requests):
            chunks.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        chunks.append(current)
    return chunks


def sum_prompt_logprobs(prompt_logprobs, input_ids: Sequence[int],
                        target_mask: Sequence[int]) -> float:
    """s_M from one request's prompt_logprobs (entry j: {token id: Logprob} for token j; entry 0
    is None, nothing predicts the first token)."""
    total = 0.0
    for j, (tok, is_target) in enumerate(zip(input_ids, target_mask, strict=True)):
        if not is_target:
            continue
        entry = prompt_logprobs[j]
        if entry is None or tok not in entry:
            raise RuntimeError(f"vLLM returned no log-prob for prompt token {j}")
        total += float(entry[tok].logprob)
    return total


class VllmEngine:
    """One vLLM instance per engine, started on first use (scoring needs max_model_len), over
    the `tensor_parallel` GPUs its process sees (engine_pool.device_groups)."""

    batches_itself = True  # continuous batching: give it large chunks, not small batches

    def __init__(self, model: str, precision: str, seed: int, tensor_parallel: int = 1):
        self.path = resolve_model_uri(model)
        self.tensor_parallel = tensor_parallel
        self.tokenizer = load_tokenizer(self.path)
        self.precision = precision
        self.seed = seed
        self._llms: dict[int | None, object] = {}

    def _llm(self, max_model_len: int | None = None):
        if max_model_len not in self._llms:
            from vllm import LLM  # noqa: PLC0415

            kwargs = {"model": self.path, "tokenizer": self.path, "dtype": self.precision,
                      "seed": self.seed, "tensor_parallel_size": self.tensor_parallel}
            if max_model_len:
                kwargs["max_model_len"] = max_model_len
            self._llms[max_model_len] = LLM(**kwargs)
        return self._llms[max_model_len]

    def generate(self, prompts: Sequence[str], keys: Sequence[str], *, n: int = 1,
                 sample: bool, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int,
                 batch_size: int, desc: str = "generate") -> list[list[str]]:
        """n completions per prompt, in input order (LLM.generate keeps it). Prompts go in as
        token ids of the templated text, so vLLM adds no second bos; batch_size is vLLM's
        business (continuous batching)."""
        from vllm import SamplingParams  # noqa: PLC0415
        from vllm.inputs import TokensPrompt  # noqa: PLC0415

        if sample:
            params = [SamplingParams(**sampling_kwargs(
                n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                seed=request_seed(self.seed, key))) for key in keys]
        else:
            params = [SamplingParams(**greedy_kwargs(max_tokens))] * len(keys)
        ids = [self.tokenizer(prompt_text(self.tokenizer, p), add_special_tokens=False)[
            "input_ids"] for p in prompts]
        outputs = self._llm().generate([TokensPrompt(prompt_token_ids=i) for i in ids], params,
                                       use_tqdm=True)
        return [[c.text for c in out.outputs] for out in outputs]

    def lm_eval_model(self, batch_size: int):
        """lm-eval's own vLLM wrapper of the same checkpoint (it starts its own engine)."""
        from lm_eval.models.vllm_causallms import VLLM  # noqa: PLC0415

        return VLLM(pretrained=self.path, dtype=self.precision, seed=self.seed,
                    batch_size="auto", tensor_parallel_size=self.tensor_parallel)

    def score(self, encodings: Sequence[Encoded], *, max_length: int, batch_size: int,
              desc: str = "score") -> list[float]:
        """s_M of each encoding, chunked to at most batch_size * max_length tokens per call."""
        from vllm import SamplingParams  # noqa: PLC0415
        from vllm.inputs import TokensPrompt  # noqa: PLC0415

        llm = self._llm(max_model_len=max_length + 1)
        params = SamplingParams(**scoring_kwargs())
        out = [0.0] * len(encodings)
        chunks = token_chunks([len(e.input_ids) for e in encodings], batch_size * max_length,
                              batch_size)
        for n, chunk in enumerate(chunks, start=1):
            log.info("%s: chunk %d/%d (%d requests)", desc, n, len(chunks), len(chunk))
            prompts = [TokensPrompt(prompt_token_ids=encodings[i].input_ids) for i in chunk]
            results = llm.generate(prompts, params, use_tqdm=False)
            for i, res in zip(chunk, results, strict=True):
                out[i] = sum_prompt_logprobs(res.prompt_logprobs, encodings[i].input_ids,
                                             encodings[i].target_mask)
        return out
