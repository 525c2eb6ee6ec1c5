"""The pure parts of `cream get` and `cream logs` (cream_operator/view.py): the text they print
and which stage's output they follow. tests/cluster/test_cream_get_logs.py runs both against a
real cluster."""

from __future__ import annotations

import pytest

from cream_operator import view
from cream_operator.local import format_table
from cream_operator.spec import CreamRunStatus, IterationResult


def _step(key: str, phase: str, start: str | None = None) -> dict:
    it, stage = key.split("/")
    return {"key": key, "stage": stage.split("-")[0], "iteration": int(it.removeprefix("iter-")),
            "phase": phase, "job": f"job-{stage}", "startTime": start}


RESULTS = [{"iteration": 0, "accuracy": {"gsm8k": 0.1, "arc_easy": 0.25}},
           {"iteration": 1, "consistencyRate": 0.7187500000000001, "pairs": 16, "dropped": 0,
            "accuracy": {"gsm8k": 0.0}}]


def _run(status: dict | None, iterations: int | None = 2) -> dict:
    run = {"metadata": {"name": "tiny", "namespace": "ml"},
           "spec": {"iterations": iterations} if iterations else {}}
    if status is not None:
        run["status"] = status
    return run


def test_get_prints_the_header_and_the_table_cream_run_prints():
    text = view.format_run(_run({
        "phase": "Running", "iteration": 1, "stage": "score", "results": RESULTS,
        "steps": [_step("iter-1/sample", "Succeeded"), _step("iter-1/score-m0", "Running"),
                  _step("iter-1/score-m1", "Running")]}))
    head, blank, *table = text.splitlines()
    assert head == "CreamRun ml/tiny: Running, iteration 1 of 2, running iter-1/score-m0, " \
                   "iter-1/score-m1"
    assert blank == ""
    assert "\n".join(table) == format_table(
        [IterationResult.model_validate(r) for r in RESULTS])
    assert table[3].split() == ["1", "0.719", "16", "0", "-", "0.000"]


def test_get_of_a_new_run_and_of_a_failed_one():
    assert view.format_run(_run(None, None)) == \
        "CreamRun ml/tiny: Pending\n\n(no iteration has results yet)"
    failed = view.format_run(_run({"phase": "Failed", "iteration": 1, "stage": "dpo",
                                   "message": "stage iter-1/dpo failed: exit code 1"}))
    assert failed.splitlines()[:2] == ["CreamRun ml/tiny: Failed, iteration 1 of 2",
                                       "  stage iter-1/dpo failed: exit code 1"]


def test_a_status_this_cli_cannot_read_is_named():
    with pytest.raises(view.ViewError, match="ml/tiny: its status does not match"):
        view.format_run(_run({"phase": "Exploded"}))


def test_logs_follows_every_running_stage_else_the_last_started():
    status = CreamRunStatus.model_validate({"steps": [
        _step("iter-0/sft", "Succeeded", "2026-01-01T00:00:00Z"),
        _step("iter-1/score-m0", "Running", "2026-01-01T00:02:00Z"),
        _step("iter-1/score-m1", "Running", "2026-01-01T00:02:01Z")]})
    steps, note = view.chosen_steps(status, None)
    assert [s.key for s in steps] == ["iter-1/score-m0", "iter-1/score-m1"] and note is None

    done = CreamRunStatus.model_validate({"steps": [
        _step("iter-0/evaluate", "Succeeded", "2026-01-01T00:03:00Z"),
        _step("iter-1/dpo", "Failed", "2026-01-01T00:09:00Z"),
        _step("iter-1/sample", "Succeeded", "2026-01-01T00:04:00Z")]})
    steps, note = view.chosen_steps(done, None)
    assert [s.key for s in steps] == ["iter-1/dpo"]
    assert note == "no stage is running; the last one to start: iter-1/dpo (Failed)"

    steps, note = view.chosen_steps(done, "iter-1/sample")
    assert [s.key for s in steps] == ["iter-1/sample"] and note is None
    with pytest.raises(view.ViewError, match=r"no stage 'iter-2/dpo' in this run \(started "
                                             r"stages: iter-0/evaluate, iter-1/dpo, iter-1/sample"):
        view.chosen_steps(done, "iter-2/dpo")
    with pytest.raises(view.ViewError, match="no stage has started yet"):
        view.chosen_steps(CreamRunStatus(), None)


def test_lines_of_several_pods_are_tagged_whole():
    out: list[bytes] = []
    tagged = view._Tagged("[a] ", out.append)
    for chunk in (b"one\ntw", b"o\n", b"\rbar 50%\rbar 100%", b"\nend"):
        tagged(chunk)
    tagged.close()
    assert b"".join(out) == b"[a] one\n[a] two\n[a] \rbar 50%\rbar 100%\n[a] end\n"
