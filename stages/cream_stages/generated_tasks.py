"""Verifiable task sets, generated: seeded, deterministic, with exact ground truth.

Real benchmarks (ARC, GSM8K, ... from files or s3://) stay the measure of a model; these add sets
of any size whose every answer is right by construction, so a run on any machine can show
whether a model moved, and prompt sets can be as large as an experiment needs. A set is named by
a URI, usable wherever a data URI is (prompt sets, evaluation tasks), or written out as JSONL with
`cream generate <uri>`:

- `gen://arithmetic?n=400&seed=1&steps=1&ops=add,sub`: word problems in GSM8K's format
  (`{"id", "question", "answer": "...<<a+b=c>>c...\\n#### c"}`); `steps` (1 to 3) is the number of
  operations, `ops` which of add, sub, mul, div (exact) they draw from (default all four).
  Evaluate with `format: gsm8k`.
- `gen://choice?n=400&seed=1&options=5&labels=numbers`: multiple-choice items in ARC's JSONL shape
  (`{"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}`): sums, the largest
  or smallest number, the next number of a sequence, the day after a day, the odd category out,
  opposites. `options` is 2 to 8 (chance is 1/options); `labels` is `letters` (A, B, ...) or
  `numbers` (1, 2, ...). Evaluate with `format: multiple_choice`.

Item i depends only on (kind, seed, parameters other than n, i): `n=200` is the first half of
`n=400`. Randomness comes only from `random.Random.random()` seeded per item, the one part of the
random module whose sequence Python promises to keep across versions, so the same URI gives the
same items everywhere.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from .contract import StageInputError

SCHEME = "gen://"
MAX_ITEMS = 1_000_000


class _Draw:
    """Draws built on random() alone (see the module docstring)."""

    def __init__(self, *key: object):
        digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
        self._rng = random.Random(int.from_bytes(digest[:8], "big"))

    def below(self, k: int) -> int:
        return min(int(self._rng.random() * k), k - 1)

    def between(self, lo: int, hi: int) -> int:
        """lo..hi inclusive."""
        return lo + self.below(hi - lo + 1)

    def pick(self, seq: Sequence):
        return seq[self.below(len(seq))]

    def shuffled(self, seq: Sequence) -> list:
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return out

    def sample(self, seq: Sequence, k: int) -> list:
        return self.shuffled(seq)[:k]


# --- arithmetic word problems (GSM8K format) -----------------------------------------------------

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
         "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor",
         "Wen", "Yusuf", "Zoe")
THINGS = ("apples", "stickers", "marbles", "pencils", "books", "stamps", "cookies", "shells",
          "cards", "coins", "beads", "balloons", "crayons", "tickets", "plants", "eggs")


@dataclass(frozen=True)
class _Op:
    symbol: str  # as in GSM8K's <<a*b=c>> annotations
    apply: Callable[[int, int], int]
    text: Callable[[str, str, int], str]  # (name, thing, operand) -> the sentence


_OPS = {
    "+": _Op("+", lambda a, b: a + b,
             lambda n, t, b: f"Then {n} gets {b} more {t}."),
    "-": _Op("-", lambda a, b: a - b,
             lambda n, t, b: f"Then {n} gives away {b} {t}."),
    "*": _Op("*", lambda a, b: a * b,
             lambda n, t, b: f"Then the number of {t} {n} has "
                             + {2: "doubles.", 3: "triples."}.get(b, f"grows {b} times.")),
    "/": _Op("/", lambda a, b: a // b,
             lambda n, t, b: f"Then {n} splits the {t} into {b} equal groups and keeps only "
                             "one group."),
}


OP_NAMES = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _arithmetic_item(draw: _Draw, index: int, steps: int, ops: tuple[str, ...]) -> dict:
    name, thing = draw.pick(NAMES), draw.pick(THINGS)
    value = draw.between(2, 60)
    sentences = [f"{name} has {value} {thing}."]
    work = []
    allowed = tuple(OP_NAMES[o] for o in ops)
    for _ in range(steps):
        symbol = draw.pick(allowed if value <= 200 or allowed == ("*",) else
                           tuple(o for o in allowed if o != "*") or allowed)
        if symbol == "-" and value < 2:  # nothing to take away: an always-possible operation
            symbol = draw.pick(tuple(o for o in allowed if o in "+*"))
        if symbol == "+":
            operand = draw.between(2, 90)
        elif symbol == "-" and value >= 2:
            operand = draw.between(1, value - 1)
        elif symbol == "*":
            operand = draw.between(2, 5)
        else:
            divisors = [d for d in range(2, 10) if value % d == 0]
            if divisors:
                operand = draw.pick(divisors)
            else:  # no exact division: another of the allowed operations
                symbol = draw.pick(tuple(o for o in allowed if o in "+*"))
                operand = draw.between(2, 90) if symbol == "+" else draw.between(2, 4)
        op = _OPS[symbol]
        result = op.apply(value, operand)
        sentences.append(op.text(name, thing, operand))
        work.append(f"{value} {symbol} {operand} = <<{value}{symbol}{operand}={result}>>{result}")
        value = result
    question = " ".join([*sentences, f"How many {thing} does {name} have now?"])
    answer = "\n".join([*work, f"#### {value}"])
    return {"id": f"arithmetic-{index + 1}", "question": question, "answer": answer}


# --- multiple choice (ARC's JSONL shape) ---------------------------------------------------------

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
CATEGORIES = {
    "an animal": ("dog", "cat", "horse", "rabbit", "tiger", "sheep", "eagle", "frog", "whale",
                  "lion"),
    "a fruit": ("apple", "banana", "cherry", "grape", "mango", "pear", "peach", "lemon", "plum",
                "orange"),
    "a color": ("red", "blue", "green", "yellow", "purple", "brown", "black", "white", "pink",
                "gray"),
    "a vehicle": ("car", "bus", "train", "bicycle", "truck", "boat", "airplane", "tractor",
                  "scooter", "taxi"),
    "a tool": ("hammer", "saw", "wrench", "screwdriver", "drill", "shovel", "rake", "pliers",
               "chisel", "ladder"),
    "a piece of clothing": ("shirt", "coat", "sock", "scarf", "glove", "skirt", "jacket", "hat",
                            "sweater", "boot"),
}
OPPOSITES = (("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"),
             ("open", "closed"), ("happy", "sad"), ("light", "dark"), ("early", "late"),
             ("full", "empty"), ("wet", "dry"), ("hard", "soft"), ("loud", "quiet"),
             ("old", "young"), ("rich", "poor"), ("strong", "weak"), ("thick", "thin"),
             ("high", "low"), ("clean", "dirty"), ("inside", "outside"), ("win", "lose"))


def _distinct_numbers(draw: _Draw, correct: int, k: int, spread: Sequence[int]) -> list[int]:
    """k - 1 wrong numbers near `correct` (never equal to it or to each other, never negative)."""
    out: list[int] = []
    for delta in draw.shuffled(spread):
        candidate = correct + delta
        if candidate >= 0 and candidate != correct and candidate not in out:
            out.append(candidate)
        if len(out) == k - 1:
            return out
    raise AssertionError("the spread offers too few distractors")  # a bug in this module


_SPREAD = (-20, -11, -10, -9, -3, -2, -1, 1, 2, 3, 9, 10, 11, 20)


def _choice_sum(draw: _Draw, k: int) -> tuple[str, str, list[str]]:
    a, b = draw.between(5, 80), draw.between(5, 80)
    wrong = _distinct_numbers(draw, a + b, k, _SPREAD)
    return f"What is {a} + {b}?", str(a + b), [str(w) for w in wrong]


def _choice_extreme(draw: _Draw, k: int) -> tuple[str, str, list[str]]:
    numbers = draw.sample(range(10, 1000), k)
    largest = draw.below(2) == 0
    answer = max(numbers) if largest else min(numbers)
    word = "largest" if largest else "smallest"
    return (f"Which of these numbers is the {word}?", str(answer),
            [str(x) for x in numbers if x != answer])


def _choice_sequence(draw: _Draw, k: int) -> tuple[str, str, list[str]]:
    start, step = draw.between(1, 30), draw.between(2, 12)
    shown = [start + step * i for i in range(4)]
    answer = start + step * 4
    wrong = _distinct_numbers(draw, answer, k, (-step, step, 1, -1, 2, -2, step + 1, step - 1,
                                                2 * step, -2 * step + 1))
    text = ", ".join(map(str, shown))
    return f"What number comes next in the sequence {text}, ...?", str(answer), \
        [str(w) for w in wrong]


def _choice_day(draw: _Draw, k: int) -> tuple[str, str, list[str]]:
    i = draw.below(7)
    after = draw.below(2) == 0
    answer = DAYS[(i + 1) % 7] if after else DAYS[(i - 1) % 7]
    others = [d for d in DAYS if d not in (answer, DAYS[i])]
    word = "after" if after else "before"
    return f"Which day of the week comes right {word} {DAYS[i]}?", answer, \
        draw.sample(others, k - 1)


def _choice_category(draw: _Draw, k: int) -> tuple[str, str, list[str]]:
    names = list(CATEGORIES)
    target = draw.pick(names)
    answer = draw.pick(CATEGORIES[target])
    others = [w for c in names if c != target for w in CATEGORIES[c]]
    return f"Which of these is {target}?", answer, draw.sample(others, k - 1)


def _choice_opposite(draw: _Draw, k: int) -> tuple[str, str, list[str]]:
    pair = draw.pick(OPPOSITES)
    word, answer = pair if draw.below(2) == 0 else pair[::-1]
    others = [w for p in OPPOSITES if p != pair for w in p]
    return f"Which word means the opposite of '{word}'?", answer, draw.sample(others, k - 1)


_CHOICE_KINDS = (_choice_sum, _choice_extreme, _choice_sequence, _choice_day, _choice_category,
                 _choice_opposite)


def _labels(style: str, k: int) -> list[str]:
    return [str(i + 1) for i in range(k)] if style == "numbers" else \
        [chr(ord("A") + i) for i in range(k)]


def _choice_item(draw: _Draw, index: int, options: int, labels: str) -> dict:
    kind = _CHOICE_KINDS[draw.below(len(_CHOICE_KINDS))]
    question, answer, wrong = kind(draw, options)
    texts = draw.shuffled([answer, *wrong])
    names = _labels(labels, options)
    return {
        "id": f"choice-{index + 1}",
        "question": {"stem": question,
                     "choices": [{"text": t, "label": lab} for t, lab in zip(texts, names,
                                                                             strict=True)]},
        "answerKey": names[texts.index(answer)],
    }


# --- URIs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Kind:
    params: dict[str, tuple[Callable[[str], object], object]]  # name -> (parse, default)
    item: Callable[..., dict]


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"must be {lo} to {hi}")
        return value
    return parse


def _subset_of(*allowed: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(x.strip() for x in text.split(",")))
        if not chosen or any(x not in allowed for x in chosen):
            raise ValueError(f"must be a comma-separated subset of {','.join(allowed)}")
        if not {"add", "mul"} & set(chosen):
            raise ValueError("needs add or mul (a number cannot always be divided exactly or "
                             "taken from)")
        return chosen
    return parse


def _one_of(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text
    return parse


KINDS = {
    "arithmetic": _Kind({"steps": (_int_in(1, 3), 1),
                         "ops": (_subset_of(*OP_NAMES), tuple(OP_NAMES))}, _arithmetic_item),
    "choice": _Kind({"options": (_int_in(2, 8), 4),
                     "labels": (_one_of("letters", "numbers"), "letters")}, _choice_item),
}
_COMMON = {"n": _int_in(1, MAX_ITEMS), "seed": _int_in(0, 2**63 - 1)}


# The evaluation format each kind's records are in.
FORMATS = {"arithmetic": "gsm8k", "choice": "multiple_choice"}


def is_generated(uri: str) -> bool:
    return uri.startswith(SCHEME)


def kind_of(uri: str) -> str | None:
    """The kind a gen:// URI names, None if it names no known kind."""
    kind = urlsplit(uri).netloc
    return kind if kind in KINDS else None


def parse_uri(uri: str) -> tuple[str, int, int, dict]:
    """(kind, n, seed, other parameters) of a gen:// URI; StageInputError naming the fix."""
    parts = urlsplit(uri)
    kind = parts.netloc
    if parts.scheme != "gen" or kind not in KINDS or parts.path not in ("", "/"):
        raise StageInputError(f"{uri}: generated sets look like gen://<kind>?n=<items>&seed=<int>"
                              f", kind one of {', '.join(KINDS)}")
    spec = KINDS[kind]
    given = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "n" not in given:
        raise StageInputError(f"{uri}: parameter 'n' (the number of items) is required")
    unknown = sorted(set(given) - set(_COMMON) - set(spec.params))
    if unknown:
        known = ", ".join([*_COMMON, *spec.params])
        raise StageInputError(f"{uri}: unknown parameter {', '.join(unknown)} (known: {known})")
    values: dict[str, object] = {}
    for name, text in given.items():
        parse = _COMMON.get(name) or spec.params[name][0]
        try:
            values[name] = parse(text)
        except ValueError as exc:
            raise StageInputError(f"{uri}: parameter '{name}' {exc}".replace(
                "invalid literal for int() with base 10", "must be an integer, got")) from None
    extra = {name: values.get(name, default) for name, (_, default) in spec.params.items()}
    return kind, int(values["n"]), int(values.get("seed", 0)), extra


def generate(uri: str) -> list[dict]:
    """The records of a gen:// URI."""
    kind, n, seed, params = parse_uri(uri)
    key = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return [KINDS[kind].item(_Draw(kind, seed, key, i), i, **params) for i in range(n)]
