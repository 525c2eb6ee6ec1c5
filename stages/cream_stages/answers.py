"""Extracting the final answer from a model's output: a choice label or a number.

Each multiple-choice item brings its own labels (ARC has E and numeric labels; the reference
parser only knew A-D). The model is asked to end with "Answer: ..."; the last such line wins,
and without one the last standalone label (case-sensitive, so the article "a" is not choice A)
or the last number in the text is taken.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:：]", re.IGNORECASE)
# A number: optional sign, digits with optional thousands separators, optional decimals.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")


def _after_last_answer(text: str) -> str | None:
    matches = list(_ANSWER.finditer(text))
    return text[matches[-1].end():] if matches else None


def _label_pattern(labels: list[str]) -> str:
    # Longest first, so "10" is not read as "1"; boundaries keep "A" out of "All".
    alts = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    return rf"(?<![A-Za-z0-9])({alts})(?![A-Za-z0-9])"


def extract_choice(output: str, labels: list[str]) -> str | None:
    """The chosen label (as the item spells it) or None."""
    if not labels:
        return None
    tail = _after_last_answer(output)
    if tail is not None:
        by_upper = {label.upper(): label for label in labels}
        m = re.match(r"\s*[\(\[]?\s*" + _label_pattern(list(by_upper)), tail.upper())
        if m:
            return by_upper[m.group(1)]
    found = re.findall(_label_pattern(labels), output)
    return found[-1] if found else None


def normalize_number(text: str) -> str | None:
    """Canonical form of a number: no thousands separators, no trailing zeros ('1,500.0' ->
    '1500', '-0.50' -> '-0.5'); None if it is not one."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_number(output: str) -> str | None:
    """The final numeric answer: the first number after the last 'Answer:' (or '####'), else the
    last number in the text; normalised."""
    text = output.replace("$", "")
    tail = _after_last_answer(text)
    if tail is None and "####" in text:
        tail = text.rsplit("####", 1)[1]
    if tail is not None:
        m = _NUMBER.search(tail)
        if m:
            return normalize_number(m.group(0))
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def gsm8k_gold(answer: str) -> str | None:
    """The gold number of a GSM8K answer ('... #### 1,500')."""
    if "####" not in answer:
        return None
    return normalize_number(answer.rsplit("####", 1)[1])
