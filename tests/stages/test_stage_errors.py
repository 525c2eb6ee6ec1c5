"""Bad input: a non-zero exit, one line naming the file and field, and no manifest."""

from __future__ import annotations

import json

import pytest
from stage_helpers import TINY, run_stage, termination_message

TRAIN = {"epochs": 1, "learning_rate": 1e-3, "batch_size": 2, "max_length": 64}
GOOD_PAIR = {"prompt_id": "a", "prompt": "p", "chosen": "c", "rejected": "r", "weight": 1.0,
             "ref_chosen_logp": -1.0, "ref_rejected_logp": -2.0}


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def _sample(prompts):
    return "sample", {"model": TINY, "prompts": prompts, "n": 2, "max_tokens": 4}


CASES = {
    "malformed JSON line": (
        lambda t: _sample(_write(t, "p.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "b", \n')),
        ["p.jsonl", "line 2"]),
    "empty file": (lambda t: _sample(_write(t, "p.jsonl", "\n")), ["p.jsonl", "empty"]),
    "prompt set with no prompts": (lambda t: _sample(_write(t, "p.json", "[]")),
                                   ["p.json", "no prompts"]),
    "prompt without its text": (lambda t: _sample(_write(t, "p.jsonl", _jsonl([{"id": "a"}]))),
                                ["p.jsonl", "record 1", "'prompt'"]),
    "model dir that does not exist": (
        lambda t: ("score", {"model": str(t / "no-model"), "model_index": 1,
                             "responses": _write(t, "r.jsonl", _jsonl([
                                 {"prompt_id": "a", "prompt": "q", "responses": ["x", "y"]}]))}),
        ["no-model", "does not exist"]),
    "unknown builtin model": (
        lambda t: ("sample", {"model": "builtin://huge-llama",
                              "prompts": "builtin://data/prompts-1.jsonl"}),
        ["builtin://huge-llama", "unknown builtin model"]),
    "sft record missing its response": (
        lambda t: ("sft", {"model": TINY, "train": TRAIN,
                           "data": _write(t, "sft.jsonl", _jsonl([{"instruction": "q"}]))}),
        ["sft.jsonl", "record 1", "'output'"]),
    "eval item missing its answer": (
        lambda t: ("evaluate", {"model": TINY, "tasks": [{
            "name": "arc", "format": "multiple_choice", "uri": _write(t, "arc.jsonl", _jsonl([
                {"id": "q", "question": "?", "choices": {"text": ["a", "b"],
                                                         "label": ["A", "B"]}}]))}]}),
        ["arc.jsonl", "'answerKey'"]),
    "pair missing its weight": (
        lambda t: ("dpo", {"model": TINY, "train": TRAIN, "pairs": _write(t, "pairs.jsonl", _jsonl(
            [{k: v for k, v in GOOD_PAIR.items() if k != "weight"}]))}),
        ["pairs.jsonl", "'weight'"]),
    "missing input file": (
        lambda t: ("consistency", {"iteration": 1, "responses": str(t / "gone.jsonl"),
                                   "current": str(t / "c.jsonl"), "previous": str(t / "p.jsonl")}),
        ["gone.jsonl", "no such file"]),
    "invalid request field": (
        lambda t: ("sample", {"model": TINY, "prompts": "builtin://data/prompts-1.jsonl",
                              "n": 1}),
        ["'n'", "greater than or equal to 2"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly(tmp_path, case):
    build, needles = CASES[case]
    stage, fields = build(tmp_path)
    out = tmp_path / "out"
    proc = run_stage(stage, {"stage": stage, "output": str(out), **fields}, tmp_path, "bad")
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1
    for needle in needles:
        assert needle in error_lines[0]
        assert needle in termination_message(tmp_path, "bad")
    assert not (out / "manifest.json").exists()
