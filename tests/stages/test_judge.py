"""Judge rewarding (SRLM) on the tiny model with `cream run`: a pattern the tiny model's text
can satisfy (any digit) makes parsing succeed deterministically for a seed; the default pattern,
which a random model never satisfies, fails the judge stage with a message saying so."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from stage_helpers import cream_run

ROOT = Path(__file__).resolve().parents[2]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(tmp_path: Path, judge: dict) -> tuple[subprocess.CompletedProcess, Path]:
    doc = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
    spec = doc["spec"]
    del spec["iterations"]
    spec["schedule"] = [{"kind": "sft"}, {"kind": "selfReward", "reward": "judge",
                                          "judge": judge}]
    spec["data"]["maxPrompts"] = 6
    spec["sft"]["epochs"] = 2
    spec["consistency"]["strategy"] = "dynamic"
    spec["evaluation"] = {"tasks": [], "baseline": False}
    proc, out = cream_run(doc, tmp_path)
    return proc, out


def test_judge_rewarded_iteration_end_to_end(tmp_path):
    judge = {"template": "Rate from 0 to 9.\nQ: {prompt}\nA: {response}\nRating:",
             "pattern": r"([0-9])", "minScore": 0, "maxScore": 9, "judgements": 2,
             "maxTokens": 16, "consistency": True}
    proc, out = _run(tmp_path, judge)
    assert proc.returncode == 0, proc.stderr[-3000:]
    judged = json.loads((out / "iter-1/judge-m1/manifest.json").read_text())["metrics"]
    records = _rows(out / "iter-1/judge-m1/judgements.jsonl")
    texts = [t for r in records for ts in r["judgements"] for t in ts]
    assert len(texts) == judged["judgements"] == 6 * 4 * 2  # prompts x responses x K
    parsed = [t for t in texts if any(ch.isdigit() for ch in t)]
    assert judged["parsed"] == len(parsed) > 0
    assert judged["parse_failures"] == len(texts) - len(parsed)
    assert sum(judged["score_histogram"].values()) == len(parsed)
    for r in records:  # each response's score: the mean of its parseable judgements
        for ts, score, n in zip(r["judgements"], r["scores"], r["parsed"], strict=True):
            values = [float(next(ch for ch in t if ch.isdigit())) for t in ts
                      if any(ch.isdigit() for ch in t)]
            assert n == len(values)
            assert score == (sum(values) / len(values) if values else None)
    # Pairs: best vs worst judged, weighted by C against M0's judge ranking (dynamic).
    cons = json.loads((out / "iter-1/consistency/manifest.json").read_text())["metrics"]
    pairs = _rows(out / "iter-1/consistency/pairs.jsonl")
    by_id = {r["prompt_id"]: r for r in records}
    for pair in pairs:
        scores = by_id[pair["prompt_id"]]["scores"]
        assert scores[pair["chosen_index"]] == max(s for s in scores if s is not None)
        assert scores[pair["rejected_index"]] == min(s for s in scores if s is not None)
    assert cons["pairs"] == len(pairs) and cons["pairs"] + cons["dropped"] == 6
    results = {r["iteration"]: r for r in json.loads((out / "results.json").read_text())
               ["iterations"]}
    assert results[1]["kind"] == "selfReward"
    assert results[1]["judge_parse_failures"] == judged["parse_failures"]
    assert results[1]["judge_score_mean"] == judged["score_mean"]
    assert (out / "models/M2/model.safetensors").is_file()


def test_a_judge_that_never_parses_fails_its_stage_saying_so(tmp_path):
    proc, out = _run(tmp_path, {"judgements": 1, "maxTokens": 8})  # the default pattern
    assert proc.returncode != 0
    assert "judge-m1" in proc.stdout + proc.stderr
    assert "never returned a parseable score: 0 of 24 judgements" in proc.stderr
    assert not (out / "iter-1/judge-m1/manifest.json").exists()
