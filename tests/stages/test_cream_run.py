"""`cream run`: a whole (small) CreamRun on this machine, its table and results.json, and a rerun
of a finished run that does no work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from stage_helpers import mtimes

ROOT = Path(__file__).resolve().parents[2]


def _cream(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cream_operator.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1200)


def test_cream_run_end_to_end_then_a_rerun_does_nothing(tmp_path):
    doc = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
    # One iteration keeps this test short; make demo runs the two of the example.
    doc["spec"]["iterations"] = 1
    tasks = doc["spec"]["evaluation"]["tasks"]
    # Two of ours and the one through lm-evaluation-harness.
    doc["spec"]["evaluation"]["tasks"] = tasks[:2] + [t for t in tasks if t["format"] == "lm_eval"]
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"

    first = _cream("run", str(spec_file), "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {r["iteration"]: r for r in results["iterations"]}
    assert sorted(rows) == [0, 1]
    assert set(rows[0]["accuracy"]) == {"arc_easy", "arc_challenge", "lm_arc_easy"}
    lm = json.loads((out / "iter-1/evaluate/lm_eval.json").read_text())["lm_arc_easy"]
    assert rows[1]["accuracy"]["lm_arc_easy"] == lm["acc,none"]
    assert 0.0 <= rows[1]["consistency_rate"] <= 1.0
    assert rows[1]["pairs"] + rows[1]["dropped"] == 16  # the prompts of prompts-1.jsonl
    assert rows[1]["model_uri"] == str(out / "models" / "M2")
    cons = json.loads((out / "iter-1/consistency/manifest.json").read_text())["metrics"]
    assert rows[1]["consistency_rate"] == cons["consistency_rate"]
    # The table: a header, a rule, one row per iteration.
    lines = first.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["iteration",
                                                                             "consistency"])
    assert lines[header + 2].split()[0] == "0" and lines[header + 3].split()[0] == "1"
    assert "8 stage(s) ran" in first.stdout

    before = mtimes(out)
    again = _cream("run", str(spec_file), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 stage(s) ran" in again.stdout
    assert again.stdout.count("done already, skipped") == 8
    changed = {k for k, v in mtimes(out).items() if before.get(k) != v}
    assert changed == {"results.json"}


def test_cream_run_refuses_a_bad_spec_before_running_anything(tmp_path):
    doc = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
    doc["spec"]["data"]["sft"] = str(tmp_path / "missing.jsonl")
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    proc = _cream("run", str(spec_file), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "spec.data.sft" in proc.stderr and "no such file" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_stage_stops_the_run_and_a_rerun_resumes(tmp_path):
    doc = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
    doc["spec"]["iterations"] = 1
    doc["spec"]["evaluation"] = {"tasks": [], "baseline": False}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "p1", "prompt": "Say hi."}\n{"id": "p2"}\n')
    doc["spec"]["data"]["prompts"] = [str(prompts)]
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    failed = _cream("run", str(spec_file), "--out", str(out), cwd=tmp_path)
    assert failed.returncode == 1
    assert "iter-1/sample" in failed.stderr and "prompts.jsonl" in failed.stderr
    assert (out / "models/M1/manifest.json").exists()
    assert not (out / "iter-1/sample/manifest.json").exists()

    prompts.write_text('{"id": "p1", "prompt": "Say hi."}\n'
                       '{"id": "p2", "prompt": "Name a fruit."}\n')
    resumed = _cream("run", str(spec_file), "--out", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[1/6] iter-0/sft: done already, skipped" in resumed.stdout
    assert "5 stage(s) ran" in resumed.stdout


def test_early_stopping_ends_a_cream_run_after_the_iteration_that_did_not_improve(tmp_path):
    doc = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
    spec = doc["spec"]
    spec["iterations"] = 3
    spec["data"]["prompts"] = spec["data"]["prompts"][:1]
    spec["data"]["maxPrompts"] = 6
    spec["sft"]["epochs"] = 2
    spec["evaluation"] = {"tasks": [], "baseline": False}
    # A consistency rate is in [0, 1]: none can improve on the best by more than 1, so the
    # second iteration stops the run and the third never starts.
    spec["earlyStopping"] = {"metric": "consistencyRate", "minDelta": 1.0}
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    proc = _cream("run", str(spec_file), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped early by iter-2/consistency: consistency rate" in proc.stdout
    assert (out / "models/M3/manifest.json").exists()  # the stopping iteration finishes
    assert not (out / "iter-3").exists() and not (out / "models/M4").exists()
    rows = json.loads((out / "results.json").read_text())["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
