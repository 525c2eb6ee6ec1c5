"""Evaluation items in the formats the reference used, normalised to one shape, and their prompt.

Multiple choice: ARC JSONL ({"id", "question": {"stem", "choices": [{"text", "label"}]},
"answerKey"}), the HF-datasets shape ({"question", "choices": {"text": [..], "label": [..]},
"answerKey"}), OpenBookQA ({"question_stem", "choices", "answerKey"}) and SIQA ({"context",
"question", "answerA".."answerC", "label": "1".."3"}). GSM8K: {"question", "answer": "... #### 42"}.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import generated_tasks
from .answers import extract_choice, extract_number, gsm8k_gold, normalize_number
from .contract import StageInputError
from .data import read_records, where

INSTRUCTION = (
    "Answer the question by thinking step by step. At the end, output the final answer, "
    "starting with 'Answer:'."
)


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    labels: list[str]  # empty for numeric answers
    choices: list[str]
    answer: str

    def prompt(self) -> str:
        """The user turn: the question, each choice on its own line, then the instruction."""
        lines = [self.question, *(f"{lab}. {text}" for lab, text in zip(self.labels, self.choices,
                                                                           strict=True)),
                 INSTRUCTION]
        return "\n".join(lines)

    def extract(self, output: str) -> str | None:
        return extract_choice(output, self.labels, self.choices) if self.labels \
            else extract_number(output)

    def is_correct(self, prediction: str | None) -> bool:
        if prediction is None:
            return False
        if self.labels:
            return prediction.strip().upper() == self.answer.strip().upper()
        return normalize_number(prediction) == self.answer


def _choices(uri: str, i: int, rec: dict, raw) -> tuple[list[str], list[str]]:
    """(labels, texts) from a list of {"text", "label"} or a dict {"text": [..], "label": [..]}."""
    if isinstance(raw, dict) and isinstance(raw.get("text"), list) and isinstance(
            raw.get("label"), list) and len(raw["text"]) == len(raw["label"]):
        labels, texts = raw["label"], raw["text"]
    elif isinstance(raw, list) and all(
            isinstance(c, dict) and "text" in c and "label" in c for c in raw):
        labels, texts = [c["label"] for c in raw], [c["text"] for c in raw]
    else:
        raise StageInputError(f"{where(uri, i, rec)}: field 'choices' must be a list of "
                              "{text, label} or {text: [..], label: [..]} of equal lengths")
    labels, texts = [str(x).strip() for x in labels], [str(x) for x in texts]
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
        raise StageInputError(f"{where(uri, i, rec)}: field 'choices' needs at least two "
                              "distinct, non-empty labels")
    return labels, texts


def _field(uri: str, i: int, rec: dict, name: str) -> str:
    value = rec.get(name)
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        what = "missing field" if name not in rec else "expected a non-empty string in field"
        raise StageInputError(f"{where(uri, i, rec)}: {what} '{name}'")
    return str(value)


def _multiple_choice(uri: str, i: int, rec: dict) -> EvalItem:
    if "answerA" in rec:  # SIQA
        labels = [k[-1] for k in ("answerA", "answerB", "answerC") if k in rec]
        texts = [_field(uri, i, rec, f"answer{lab}") for lab in labels]
        gold = _field(uri, i, rec, "label").strip()
        if not gold.isdigit() or not 1 <= int(gold) <= len(labels):
            raise StageInputError(f"{where(uri, i, rec)}: field 'label' must be 1..{len(labels)}")
        question = _field(uri, i, rec, "question")
        if isinstance(rec.get("context"), str) and rec["context"].strip():
            question = f"{rec['context'].strip()}\n{question}"
        return EvalItem("", question, labels, texts, labels[int(gold) - 1])
    if isinstance(rec.get("question"), dict):  # ARC / OpenBookQA JSONL
        q = rec["question"]
        if not isinstance(q.get("stem"), str):
            raise StageInputError(f"{where(uri, i, rec)}: missing field 'question.stem'")
        question, raw = q["stem"], q.get("choices")
        if raw is None:
            raise StageInputError(f"{where(uri, i, rec)}: missing field 'question.choices'")
    else:
        name = "question_stem" if "question_stem" in rec else "question"
        question = _field(uri, i, rec, name)
        if "choices" not in rec:
            raise StageInputError(f"{where(uri, i, rec)}: missing field 'choices'")
        raw = rec["choices"]
    labels, texts = _choices(uri, i, rec, raw)
    gold = _field(uri, i, rec, "answerKey").strip()
    if gold not in labels:
        raise StageInputError(f"{where(uri, i, rec)}: field 'answerKey' {gold!r} is not one of "
                              f"the labels {labels}")
    return EvalItem("", question, labels, texts, gold)


def _gsm8k(uri: str, i: int, rec: dict) -> EvalItem:
    question = _field(uri, i, rec, "question")
    gold = gsm8k_gold(_field(uri, i, rec, "answer"))
    if gold is None:
        raise StageInputError(f"{where(uri, i, rec)}: field 'answer' must end with '#### "
                              "<number>'")
    return EvalItem("", question, [], [], gold)


def check_generated_format(uri: str, fmt: str) -> None:
    """A generated set (gen://) is evaluated in the format its records are in."""
    kind = generated_tasks.kind_of(uri) if generated_tasks.is_generated(uri) else None
    if kind is not None and generated_tasks.FORMATS[kind] != fmt:
        raise StageInputError(f"{uri}: gen://{kind} items are evaluated with format "
                              f"'{generated_tasks.FORMATS[kind]}', not '{fmt}'")


def load_task(name: str, uri: str, fmt: str, limit: int | None = None) -> list[EvalItem]:
    """The task's items (the first `limit`), each with an id (its own, else task-<n>)."""
    check_generated_format(uri, fmt)
    parse = _gsm8k if fmt == "gsm8k" else _multiple_choice
    records = read_records(uri)
    if limit:
        records = records[:limit]
    items = []
    for i, rec in enumerate(records):
        item = parse(uri, i, rec)
        rid = next((str(rec[k]) for k in ("id", "uuid") if k in rec), f"{name}-{i + 1}")
        items.append(EvalItem(rid, item.question, item.labels, item.choices, item.answer))
    return items
