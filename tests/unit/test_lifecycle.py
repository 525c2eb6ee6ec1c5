"""The operator's lifecycle parts without a cluster: the resync that replaced kopf's timer (and
its finalizer), the names that make a Job's events once-only, and one log line per action."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from cream_operator.actionlog import text
from cream_operator.controller import event_name
from cream_operator.resync import Resync, due

ROOT = Path(__file__).resolve().parents[2]
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_resync_takes_the_runs_no_event_reconciled_for_an_interval():
    runs = [("ml", "idle"), ("ml", "busy"), ("ml", "new")]
    last = {("ml", "idle"): 100.0, ("ml", "busy"): 150.0}
    assert due(runs, last, now=160.0, idle=60.0) == [("ml", "idle"), ("ml", "new")]
    assert due(runs, last, now=210.0, idle=60.0) == runs


def test_one_run_failing_its_resync_does_not_stop_the_others():
    done = []

    def reconcile(namespace, name):
        if name == "a":
            raise RuntimeError("API server unavailable")
        done.append(name)

    Resync(lambda: [("ml", "a"), ("ml", "b")], dict, reconcile, interval=60).once()
    assert done == ["b"]


def test_a_jobs_event_has_one_name_per_job_and_reason():
    name = event_name("tiny", "uid-1", "StageStarted")
    assert name == event_name("tiny", "uid-1", "StageStarted")  # a retry posts the same event
    assert name != event_name("tiny", "uid-2", "StageStarted")  # a new Job of the step: another
    assert name != event_name("tiny", "uid-1", "StageSucceeded")
    long = event_name("a" * 199 + "." + "b" * 53, "uid-1", "StageStarted")
    assert len(long) <= 253 and DNS_SUBDOMAIN.match(long), long


def test_an_action_line_names_the_action_then_its_fields():
    assert text("job created", {"run": "ml/tiny", "job": "tiny-1", "step": "iter-0/sft"}) == \
        "job created run=ml/tiny job=tiny-1 step=iter-0/sft"
    assert text("phase changed", {"run": "ml/tiny", "phase_from": None, "phase": "Running"}) == \
        "phase changed run=ml/tiny phase=Running"


def _operator_logging(log_format: str) -> list[str]:
    """What the operator's logging setup prints for one action and one kopf line."""
    code = ("import logging, sys\n"
            "from cream_operator.startup import configure_logging\n"
            "from cream_operator.actionlog import action\n"
            f"configure_logging(False, {log_format!r})\n"
            "action('job created', run='ml/tiny', job='tiny-1', step='iter-0/sft')\n"
            "logging.getLogger('kopf.activities').info('kopf says hi')\n"
            "logging.getLogger('kopf.objects').info(\"Handler 'job_event' succeeded.\")\n"
            "logging.getLogger('kopf.objects').warning('a handler failed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "operator"), str(ROOT / "stages"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return (out.stdout + out.stderr).splitlines()


def test_the_operator_prints_each_log_line_once():
    lines = _operator_logging("text")
    assert len([ln for ln in lines if "job created" in ln]) == 1, lines
    assert len([ln for ln in lines if "kopf says hi" in ln]) == 1, lines
    assert any(ln.endswith("job created run=ml/tiny job=tiny-1 step=iter-0/sft") for ln in lines)
    # kopf's line for every watch event buries the actions; its warnings still show.
    assert not [ln for ln in lines if "succeeded" in ln], lines
    assert len([ln for ln in lines if "a handler failed" in ln]) == 1, lines


def test_json_logs_carry_an_actions_fields_as_keys():
    lines = _operator_logging("json")
    records = [json.loads(ln) for ln in lines]
    created = [r for r in records if r.get("action") == "job created"]
    assert len(created) == 1, lines
    assert (created[0]["run"], created[0]["job"], created[0]["step"]) == \
        ("ml/tiny", "tiny-1", "iter-0/sft")
