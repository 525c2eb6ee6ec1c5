"""Evaluation items in every accepted format, their prompt, and the bundled eval sets."""

from __future__ import annotations

import json

import pytest

from cream_stages.contract import StageInputError
from cream_stages.eval_tasks import INSTRUCTION, load_task

RECORDS = {
    "arc_jsonl": {"id": "q1", "question": {"stem": "Which is a solid?", "choices": [
        {"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}]}, "answerKey": "A"},
    "hf": {"id": "q2", "question": "Which unit is force?", "choices": {
        "text": ["meter", "newton", "liter"], "label": ["1", "2", "3"]}, "answerKey": "2"},
    "obqa": {"id": "q3", "question_stem": "Rain comes from", "choices": {
        "text": ["clouds", "rocks"], "label": ["A", "B"]}, "answerKey": "A"},
    "siqa": {"context": "Sam was cold.", "question": "What will Sam do?",
             "answerA": "swim", "answerB": "sleep", "answerC": "wear a coat", "label": "3"},
}


def _file(tmp_path, rows, name="task.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_formats_normalise_with_their_own_labels(tmp_path):
    items = load_task("mc", _file(tmp_path, list(RECORDS.values())), "multiple_choice")
    assert [(i.id, i.labels, i.answer) for i in items] == [
        ("q1", ["A", "B"], "A"),
        ("q2", ["1", "2", "3"], "2"),
        ("q3", ["A", "B"], "A"),
        ("mc-4", ["A", "B", "C"], "C"),
    ]
    assert items[3].question == "Sam was cold.\nWhat will Sam do?"
    assert items[3].choices == ["swim", "sleep", "wear a coat"]


def test_prompt_lists_each_choice_on_its_own_line_then_the_instruction(tmp_path):
    item = load_task("mc", _file(tmp_path, [RECORDS["hf"]]), "multiple_choice")[0]
    assert item.prompt() == ("Which unit is force?\n1. meter\n2. newton\n3. liter\n"
                             + INSTRUCTION)


def test_gsm8k_items_and_scoring(tmp_path):
    rows = [{"question": "How many?", "answer": "1000 + 500 = 1500\n#### 1,500"}]
    item = load_task("gsm8k", _file(tmp_path, rows), "gsm8k")[0]
    assert item.answer == "1500" and item.labels == []
    assert item.prompt() == "How many?\n" + INSTRUCTION
    assert item.is_correct(item.extract("so Answer: 1,500."))
    assert not item.is_correct(item.extract("Answer: 150"))


def test_limit_takes_the_first_items(tmp_path):
    items = load_task("mc", _file(tmp_path, list(RECORDS.values())), "multiple_choice", limit=2)
    assert [i.id for i in items] == ["q1", "q2"]


@pytest.mark.parametrize(("record", "field"), [
    ({"id": "x", "question": "Q?", "answerKey": "A"}, "'choices'"),
    ({"id": "x", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
      "answerKey": "E"}, "'answerKey'"),
    ({"id": "x", "question": {"choices": []}, "answerKey": "A"}, "'question.stem'"),
    ({"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c",
      "label": "7"}, "'label'"),
])
def test_malformed_items_name_the_record_and_field(tmp_path, record, field):
    uri = _file(tmp_path, [record])
    with pytest.raises(StageInputError) as exc:
        load_task("mc", uri, "multiple_choice")
    assert uri in str(exc.value) and field in str(exc.value) and "record 1" in str(exc.value)


def test_gsm8k_without_final_number_is_an_error(tmp_path):
    uri = _file(tmp_path, [{"question": "q", "answer": "no marker"}])
    with pytest.raises(StageInputError, match="'answer'"):
        load_task("gsm8k", uri, "gsm8k")


@pytest.mark.parametrize(("name", "fmt"), [
    ("arc_easy", "multiple_choice"), ("arc_challenge", "multiple_choice"),
    ("openbookqa", "multiple_choice"), ("siqa", "multiple_choice"), ("gsm8k", "gsm8k"),
])
def test_bundled_eval_sets_load(name, fmt):
    items = load_task(name, f"builtin://data/{name}.jsonl", fmt)
    assert 10 <= len(items) <= 16
    assert all(item.prompt().endswith(INSTRUCTION) for item in items)
    assert len({item.id for item in items}) == len(items)


def test_bundled_arc_challenge_has_e_and_numeric_labels():
    items = load_task("arc_challenge", "builtin://data/arc_challenge.jsonl", "multiple_choice")
    assert any("E" in item.labels for item in items)
    assert any(item.labels[0].isdigit() for item in items)
