"""Extracting the final answer from a model's output: a choice label or a number.

Read as real models write it, not only as asked ("Answer: X"):
- the answer marker: "Answer: X", "answer: x", "**Answer:** X", "The answer is X", "The final
  answer is: X", "answer = X", "X is the answer". The last marker that carries a value wins (a
  model that corrects itself), one that carries none ("the answer is not obvious") is passed
  over;
- a model that runs on after answering into a new question ("Question: ...", "Q2.", a bare
  "user" line left by a chat template whose special tokens were stripped) and answers that too:
  everything from the new question on is ignored, so the continuation cannot win;
- numbers with a Unicode minus or dash, thousands separators, decimals, a currency sign, and an
  equation before the final value ("Answer: 5 + 3 = 8" is 8);
- choices by each item's own labels (ARC has E and numeric labels; the reference parser only
  knew A-D), in either case after a marker, "(C)", "option 3", or by the option's text itself
  ("Answer: Paris").
Without a marker: GSM8K's "#### X", else the last number in the text; for choices the one label
the text names (case-sensitive, so the article "a" is not choice A): a text naming several, like a
model that only repeats the option list, gives no answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

# "answer", then a colon/equals, or "is" (+ optional colon); markdown emphasis may sit between.
_MARKER = re.compile(r"\banswer\b[*_\s]*(?:is\b[*_\s]*[:：]?|[:：=])[*_]*", re.IGNORECASE)
# "44 is the answer", "B is the correct answer": the value before the marker.
_VALUE_FIRST = re.compile(
    r"([^\s:]+)[ \t]+is[ \t]+the[ \t]+(?:final[ \t]+|correct[ \t]+|right[ \t]+)?answer\b",
    re.IGNORECASE)
# A line that starts a new question: the model ran on past its answer.
_NEW_QUESTION = re.compile(
    r"^[ \t]*(?:[#*>]+[ \t]*)?(?:(?:question|problem|exercise|example|instruction|human|user|q)"
    r"[ \t]*\d*[ \t]*[:.)]|(?:user|human)[ \t]*$)",
    re.IGNORECASE | re.MULTILINE,
)
# Minus signs and dashes models write before a number.
_MINUS = re.compile(r"[\u2212\u2012\u2013\u2014\ufe63\uff0d](?=\d)")
# A number: optional sign, digits with optional thousands separators, optional decimals.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")


def _clean(text: str) -> str:
    return _MINUS.sub("-", text.replace("$", "").replace("€", "").replace("£", ""))


def _answer_spans(text: str) -> list[str]:
    """The value each answer marker gives, the last marker first: what follows it to the end of
    its line (or the next line when the marker ends its line), or the word before "is the
    answer"."""
    found = []
    for m in _MARKER.finditer(text):
        rest = text[m.end():]
        line, _, after = rest.partition("\n")
        if not line.strip(" \t*_"):
            line = after.lstrip("\n").partition("\n")[0]
        found.append((m.start(), line))
    found += [(m.start(), m.group(1)) for m in _VALUE_FIRST.finditer(text)]
    return [span for _, span in sorted(found, reverse=True)]


def _cut_continuation(text: str, read: Callable[[str], str | None]) -> str:
    """The text up to a new question that begins after an answer was given (an answer marker
    from which `read` gets a value)."""
    first = _MARKER.search(text)
    if first is None:
        return text
    for m in _NEW_QUESTION.finditer(text, first.end()):
        head = text[:m.start()]
        if any(read(span) is not None for span in _answer_spans(head)):
            return head
    return text


def _label_pattern(labels: list[str]) -> str:
    # Longest first, so "10" is not read as "1"; boundaries keep "A" out of "All".
    alts = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    return rf"(?<![A-Za-z0-9])({alts})(?![A-Za-z0-9])"


def _choice_in_span(span: str, labels: list[str], choices: list[str] | None) -> str | None:
    by_upper = {label.upper(): label for label in labels}
    head = re.match(r"[\s*_]*(?:(?:option|choice)\s*)?[\(\[]?\s*", span, re.IGNORECASE)
    rest = span[head.end():]
    m = re.match(_label_pattern(list(by_upper)), rest.upper())
    if m and not re.match(r"\s*[-+*/x×]\s*\d", rest[m.end():]):
        return by_upper[m.group(1)]
    if choices:
        lowered = rest.lower()
        # Longest text first: "10" before "1", "pear tree" before "pear".
        for label, text in sorted(zip(labels, choices, strict=True), key=lambda lc: -len(lc[1])):
            t = text.strip().lower()
            if t and lowered.startswith(t) and not re.match(r"[A-Za-z0-9]", lowered[len(t):]):
                return label
    return None


def extract_choice(output: str, labels: list[str], choices: list[str] | None = None) \
        -> str | None:
    """The chosen label (as the item spells it) or None; `choices` (the options' texts, in the
    labels' order) lets an answer name the option instead of its label."""
    if not labels:
        return None

    def read(span: str) -> str | None:
        return _choice_in_span(span, labels, choices)

    text = _cut_continuation(output, read)
    for span in _answer_spans(text):
        found = read(span)
        if found is not None:
            return found
    # No marker: a label only when it is the one label the text names; several (an echo of the
    # option list, "A. brown B. horse ...") name no answer.
    found = set(re.findall(_label_pattern(labels), text))
    return found.pop() if len(found) == 1 else None


def normalize_number(text: str) -> str | None:
    """Canonical form of a number: no thousands separators, no trailing zeros ('1,500.0' ->
    '1500', '-0.50' -> '-0.5', '−3' -> '-3'); None if it is not one."""
    cleaned = _clean(text).strip().replace(",", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _number_in_span(span: str) -> str | None:
    """The value an answer line gives: after the last '=' when it holds an equation."""
    span = _clean(span)
    if "=" in span:
        after = span.rsplit("=", 1)[1]
        m = _NUMBER.search(after)
        if m:
            return normalize_number(m.group(0))
    m = _NUMBER.search(span)
    return normalize_number(m.group(0)) if m else None


def extract_number(output: str) -> str | None:
    """The final numeric answer, normalised: from the last answer marker that gives one, else
    after '####', else the last number in the text."""
    text = _cut_continuation(output, _number_in_span)
    for span in _answer_spans(text):
        value = _number_in_span(span)
        if value is not None:
            return value
    cleaned = _clean(text)
    if "####" in cleaned:
        value = _number_in_span(cleaned.rsplit("####", 1)[1].partition("\n")[0])
        if value is not None:
            return value
    found = _NUMBER.findall(cleaned)
    return normalize_number(found[-1]) if found else None


def gsm8k_gold(answer: str) -> str | None:
    """The gold number of a GSM8K answer ('... #### 1,500')."""
    if "####" not in answer:
        return None
    return normalize_number(answer.rsplit("####", 1)[1])
