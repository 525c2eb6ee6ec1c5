"""Answer extraction: each item's own labels (A-E, numeric), and GSM8K numbers."""

from __future__ import annotations

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
