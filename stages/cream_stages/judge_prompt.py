"""LLM-as-a-Judge, the prompt side (Self-Rewarding Language Models, Yuan et al. 2024): the judge
prompt, its checks, and reading a score out of a judgement. Standard library only: the operator
imports it to check a spec's template and pattern (judge_math.py ranks; it needs numpy).

An unparseable judgement (no match, no number, or outside [min, max]) is None: counted and left
out of the mean, never scored 0.
"""

from __future__ import annotations

import math
import re
from statistics import fmean

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
    return fmean(values) if values else None
