"""Data parallel sample, score and evaluate: 1 and 3 engines write byte-identical outputs.

Three engine processes on the CPU stand in for three GPUs (engine_pool.py: one engine per device;
on the CPU each is a process with a share of the cores). Only the manifest's per-engine figures
may differ between the runs; every file a later stage reads is compared byte for byte.
"""

from __future__ import annotations

import json

import pytest
from stage_helpers import TINY, run_stage

PROMPTS = "builtin://data/prompts-2.jsonl"
TASKS = [{"name": "arc_easy", "uri": "builtin://data/arc_easy.jsonl", "limit": 7,
          "format": "multiple_choice"},
         {"name": "gsm8k", "uri": "builtin://data/gsm8k.jsonl", "limit": 5, "format": "gsm8k"}]


def _run(stage: str, request: dict, root, name: str) -> dict:
    proc = run_stage(stage, {"stage": stage, **request}, root, name)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    return json.loads((root / name / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """sample, score and evaluate, each with 1 and with 3 engines (odd batch sizes, so the
    batches are uneven and the engines' shares differ)."""
    root = tmp_path_factory.mktemp("dp")
    out = {}
    for dp in (1, 3):
        sample = {"output": str(root / f"sample-{dp}"), "model": TINY, "prompts": PROMPTS,
                  "n": 3, "max_tokens": 10, "max_prompts": 7, "batch_size": 2, "seed": 3,
                  "data_parallel": dp}
        out["sample", dp] = _run("sample", sample, root, f"sample-{dp}")
        # both score runs read the 1-engine responses, so a sampling difference cannot hide one
        score = {"output": str(root / f"score-{dp}"), "model": TINY, "model_index": 0,
                 "responses": str(root / "sample-1" / "responses.jsonl"), "max_length": 64,
                 "batch_size": 4, "data_parallel": dp}
        out["score", dp] = _run("score", score, root, f"score-{dp}")
        evaluate = {"output": str(root / f"evaluate-{dp}"), "model": TINY, "tasks": TASKS,
                    "max_tokens": 8, "batch_size": 3, "data_parallel": dp}
        out["evaluate", dp] = _run("evaluate", evaluate, root, f"evaluate-{dp}")
    return root, out


@pytest.mark.parametrize(("stage", "file"), [("sample", "responses.jsonl"),
                                             ("score", "scores.jsonl"),
                                             ("evaluate", "predictions.jsonl")])
def test_one_and_three_engines_write_identical_outputs(runs, stage, file):
    root, manifests = runs
    one = (root / f"{stage}-1" / file).read_bytes()
    three = (root / f"{stage}-3" / file).read_bytes()
    assert one and one == three
    strip = ("data_parallel", "shards")
    assert {k: v for k, v in manifests[stage, 1]["metrics"].items() if k not in strip} == \
        {k: v for k, v in manifests[stage, 3]["metrics"].items() if k not in strip}


@pytest.mark.parametrize("stage", ["sample", "score", "evaluate"])
def test_the_manifest_shows_each_engines_share(runs, stage):
    _, manifests = runs
    one, three = manifests[stage, 1]["metrics"], manifests[stage, 3]["metrics"]
    assert one["data_parallel"] == 1 and three["data_parallel"] == 3
    assert len(one["shards"]) == 1 and len(three["shards"]) == 3
    # every batch ran exactly once, and the three engines shared them
    assert sum(s["batches"] for s in three["shards"]) == one["shards"][0]["batches"]
    assert sum(s["tokens"] for s in three["shards"]) == one["shards"][0]["tokens"]
    assert sum(s["batches"] > 0 for s in three["shards"]) >= 2
    assert all(s["seconds"] >= 0 for s in three["shards"])


def test_a_model_that_cannot_load_fails_the_stage_and_writes_nothing(tmp_path):
    request = {"output": str(tmp_path / "out"), "model": str(tmp_path / "no-model"),
               "prompts": PROMPTS, "n": 2, "max_tokens": 4, "data_parallel": 3}
    proc = run_stage("sample", {"stage": "sample", **request}, tmp_path, "bad")
    assert proc.returncode != 0 and "no-model" in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "responses.jsonl").exists()
