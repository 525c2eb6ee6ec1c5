"""LLM-as-a-Judge rewards (Self-Rewarding Language Models, Yuan et al. 2024): the preference pair
of a prompt from its responses' mean judge scores (judge_prompt.py reads them), and its weight.

Pure: no model. A response none of whose judgements parse has no score and takes no part in its
prompt's ranking. CREAM's consistency regularisation applies to judge rankings as to implicit
ones: C = (tau + 1) / 2 between this model's and the previous model's
judge scores of the same responses (consistency_math.agreement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import consistency_math as cm


@dataclass(frozen=True)
class JudgeResult:
    prompt_id: str
    kept: bool
    chosen_index: int | None
    rejected_index: int | None
    agreement: float | None  # with the previous model's judge ranking; None without one
    c: float | None


def prompt_result(prompt_id: str, scores: list[float | None],
                  previous: list[float | None] | None, method: str) -> JudgeResult:
    """The pair of one prompt from its responses' judge scores: chosen = the highest, rejected
    = the lowest (first index on ties) among the scored responses; dropped when fewer than two
    are scored or their scores all tie. With `previous`, the agreement of the two rankings over
    the responses both judges scored (at least two), else None."""
    scored = [j for j, s in enumerate(scores) if s is not None]
    values = np.array([scores[j] for j in scored], dtype=float)
    if len(scored) < 2 or np.all(values == values[0]):
        return JudgeResult(prompt_id, False, None, None, None, None)
    chosen, rejected = scored[int(np.argmax(values))], scored[int(np.argmin(values))]
    value = c = None
    if previous is not None:
        both = [j for j in scored if previous[j] is not None]
        if len(both) >= 2:
            value = cm.agreement([scores[j] for j in both], [previous[j] for j in both], method)
            c = cm.consistency_from_agreement(value, method)
    return JudgeResult(prompt_id, True, chosen, rejected, value, c)


def pair_weights(results: dict[str, JudgeResult], strategy: str) -> dict[str, float]:
    """The DPO weight of each kept prompt: `none`, or no previous ranking to compare with, 1.0
    (plain SRLM); `dynamic` its own C; `avg` the mean C of the prompts that have one."""
    kept = {pid: r for pid, r in results.items() if r.kept}
    known = [r.c for r in kept.values() if r.c is not None]
    rate = float(np.mean(known)) if known else None
    weights = {}
    for pid, r in kept.items():
        if strategy == "none" or r.c is None:
            weights[pid] = 1.0
        elif strategy == "dynamic":
            weights[pid] = float(r.c)
        elif strategy == "avg":
            weights[pid] = rate
        else:
            raise ValueError(f"unknown strategy {strategy!r}")
    return weights
