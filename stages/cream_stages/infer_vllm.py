"""vLLM for sample, score and evaluate on a GPU (vllm is imported inside functions).

Scoring uses prompt log-probs: the whole tokenised conversation is the prompt, one token is
generated, and the log-prob vLLM reports for each actual prompt token is summed over the response
positions, with the same tokenisation as the transformers path (tokenization.py). Such requests
bypass the prefix cache and their logits memory is not budgeted at start-up, so they go in chunks
of bounded total tokens. vLLM's and transformers' log-probs differ slightly: within one
iteration, every score must come from the same backend and precision (consistency checks it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from .tokenization import Encoded

log = logging.getLogger(__name__)


def request_seed(seed: int, key: str) -> int:
    """A per-prompt sampling seed: a prompt's samples depend on the seed and its id only, not on
    how vLLM batches requests."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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


def _llm(model_path: str, precision: str, seed: int, max_model_len: int | None = None):
    from vllm import LLM  # noqa: PLC0415

    kwargs = {"model": model_path, "tokenizer": model_path, "dtype": precision, "seed": seed}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    return LLM(**kwargs)


def generate(model_path: str, prompt_ids: list[list[int]], keys: list[str], *, precision: str,
             seed: int, sample: bool, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
             max_tokens: int) -> list[list[str]]:
    """n completions per prompt (token ids of the templated prompt: given as tokens, so vLLM adds
    no second bos), in input order (LLM.generate keeps it)."""
    from vllm import SamplingParams  # noqa: PLC0415
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    llm = _llm(model_path, precision, seed)
    if sample:
        params = [SamplingParams(**sampling_kwargs(n=n, temperature=temperature, top_p=top_p,
                                                   max_tokens=max_tokens,
                                                   seed=request_seed(seed, key)))
                  for key in keys]
    else:
        params = [SamplingParams(**greedy_kwargs(max_tokens))] * len(keys)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
    outputs = llm.generate(prompts, params, use_tqdm=True)
    return [[c.text for c in out.outputs] for out in outputs]


def score(model_path: str, encodings: list[Encoded], *, precision: str, seed: int,
          max_length: int, batch_size: int) -> list[float]:
    """s_M of each encoding, chunked to at most batch_size * max_length tokens per call."""
    from vllm import SamplingParams  # noqa: PLC0415
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    llm = _llm(model_path, precision, seed, max_model_len=max_length + 1)
    params = SamplingParams(**scoring_kwargs())
    out = [0.0] * len(encodings)
    chunks = token_chunks([len(e.input_ids) for e in encodings], batch_size * max_length,
                          batch_size)
    for n, chunk in enumerate(chunks, start=1):
        log.info("scoring chunk %d/%d (%d requests)", n, len(chunks), len(chunk))
        prompts = [TokensPrompt(prompt_token_ids=encodings[i].input_ids) for i in chunk]
        results = llm.generate(prompts, params, use_tqdm=False)
        for i, res in zip(chunk, results, strict=True):
            out[i] = sum_prompt_logprobs(res.prompt_logprobs, encodings[i].input_ids,
                                         encodings[i].target_mask)
    return out
