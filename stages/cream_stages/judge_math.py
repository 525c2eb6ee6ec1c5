"""LLM-as-a-Judge rewards (Self-Rewarding Language Models, Yuan et al. 2024): the judge prompt,
reading a score out of a judgement, averaging K judgements, and the preference pair of a prompt.

Pure: no model. An unparseable judgement (no match, no number, or outside [min, max]) is counted
and left out of the mean, never scored 0; a response none of whose judgements parse has no score
and takes no part in its prompt's ranking. CREAM's consistency regularisation applies to judge
rankings as to implicit ones: C = (tau + 1) / 2 between this model's and the previous model's
judge scores of the same responses (consistency_math.agreement).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from . import consistency_math as cm

# Our wording of SRLM's additive 5-point rubric: a point per criterion met, a score line last.
DEFAULT_TEMPLATE = """Judge the response below to the user's question with this additive \
5-point scale. Start from 0 and add a point for each criterion the response meets:
- It is relevant and gives some information about the question, even if incomplete.
- It covers a substantial part of the question, though it may not settle it.
- It answers the core of the question usefully and accurately.
- It is clearly written from an assistant's point of view, well organised and complete.
- It is an expert, focused, engaging answer with nothing superfluous.

Question: {prompt}

Response: {response}

Explain your judgement in at most 100 words, then end with the line "Score: <points>"."""
DEFAULT_PATTERN = r"Score:\s*([0-9]+(?:\.[0-9]+)?)"
PLACEHOLDERS = ("{prompt}", "{response}")


def judge_prompt(template: str, prompt: str, response: str) -> str:
    """The template with its placeholders filled (plain replacement: other braces stay)."""
    return template.replace("{prompt}", prompt).replace("{response}", response)


def template_problem(template: str) -> str | None:
    missing = [p for p in PLACEHOLDERS if p not in template]
    return f"the template must contain {' and '.join(missing)}" if missing else None


def pattern_problem(pattern: str) -> str | None:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return f"not a regular expression: {exc}"
    if compiled.groups < 1:
        return "the pattern needs a group capturing the number, e.g. Score: ([0-9]+)"
    return None


def parse_score(text: str, pattern: str, low: float, high: float) -> float | None:
    """The number of the pattern's first group at its first match; None when there is no match,
    the group is not a number, or the number is outside [low, high]."""
    match = re.search(pattern, text)
    if match is None or match.group(1) is None:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    if not math.isfinite(value) or not low <= value <= high:
        return None
    return value


def mean_score(parsed: list[float | None]) -> float | None:
    """The mean of the parseable judgements of one response; None when none parses."""
    values = [v for v in parsed if v is not None]
    return float(np.mean(values)) if values else None


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
