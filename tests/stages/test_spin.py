"""SPIN on the tiny model: the spin stage's pairs (reference answer over the model's own, M_t's
log-probs as the reference), the dpo stage training them with beta = lambda, and a mixed
schedule (sft, spin, CREAM) end to end with `cream run`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from stage_helpers import TINY, cream_run, run_stage, termination_message

from cream_stages.data import load_conversations
from cream_stages.logprobs import score_encodings
from cream_stages.tokenization import encode_pair

ROOT = Path(__file__).resolve().parents[2]
SFT = "builtin://data/sft.jsonl"
MAX_LENGTH = 96


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def spun(tmp_path_factory, tiny_path):
    root = tmp_path_factory.mktemp("spin")
    spin = {"stage": "spin", "output": str(root / "spin"), "model": TINY, "data": SFT,
            "max_examples": 6, "max_tokens": 12, "max_length": MAX_LENGTH, "seed": 3}
    proc = run_stage("spin", spin, root, "spin")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dpo = {"stage": "dpo", "output": str(root / "M1"), "model": TINY,
           "pairs": str(root / "spin" / "pairs.jsonl"), "beta": 0.5,
           "train": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 2,
                     "max_length": MAX_LENGTH}}
    proc = run_stage("dpo", dpo, root, "dpo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_spin_pairs_are_the_reference_over_the_models_own_answer(spun, tiny):
    model, tokenizer = tiny
    pairs = _rows(spun / "spin" / "pairs.jsonl")
    refs = {c[0]["content"]: c[1]["content"] for c in load_conversations(SFT)[:6]}
    manifest = json.loads((spun / "spin" / "manifest.json").read_text())
    assert manifest["metrics"]["prompts"] == 6
    assert manifest["metrics"]["pairs"] + manifest["metrics"]["dropped"] == 6
    assert len(pairs) == manifest["metrics"]["pairs"] > 0
    for pair in pairs:
        assert pair["chosen"] == refs[pair["prompt"]]
        assert pair["rejected"] != pair["chosen"] and pair["weight"] == 1.0
        # The reference log-probs are M_t's own, as a fresh forward pass gives them.
        encs = [encode_pair(tokenizer, pair["prompt"], pair[k], MAX_LENGTH)
                for k in ("chosen", "rejected")]
        fresh = score_encodings(model, encs, tokenizer.pad_token_id, batch_size=1)
        assert fresh == pytest.approx([pair["ref_chosen_logp"], pair["ref_rejected_logp"]],
                                      abs=1e-4)
        assert [e.n_targets for e in encs] == [pair["ref_chosen_length"],
                                               pair["ref_rejected_length"]]
    margin = sum(p["ref_chosen_logp"] - p["ref_rejected_logp"] for p in pairs) / len(pairs)
    assert manifest["metrics"]["ref_margin_mean"] == pytest.approx(margin)
    assert json.loads(termination_message(spun, "spin"))["metrics"] == manifest["metrics"]


def test_the_dpo_stage_trains_spin_pairs_from_log_2(spun):
    metrics = json.loads((spun / "M1" / "manifest.json").read_text())["metrics"]
    n = len(_rows(spun / "spin" / "pairs.jsonl"))
    assert metrics["pairs"] == n and metrics["steps"] == math.ceil(n / 2)
    # The first step starts at the reference: the SPIN loss log(1 + e^0) = log 2.
    assert metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-4)


def test_reward_margins_are_measured_while_training(spun):
    metrics = json.loads((spun / "M1" / "manifest.json").read_text())["metrics"]
    assert 0.0 <= metrics["reward_accuracy"] <= 1.0 and math.isfinite(metrics["reward_margin"])
    # One step over every pair: the policy is still the reference, so z = 0 for each pair, up
    # to the float error between training's and score's forward passes.
    n = len(_rows(spun / "spin" / "pairs.jsonl"))
    one = {"stage": "dpo", "output": str(spun / "M1-one"), "model": TINY,
           "pairs": str(spun / "spin" / "pairs.jsonl"), "beta": 0.5,
           "train": {"epochs": 1, "learning_rate": 1e-3, "batch_size": n,
                     "max_length": MAX_LENGTH}}
    proc = run_stage("dpo", one, spun, "dpo-one")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((spun / "M1-one" / "manifest.json").read_text())["metrics"]
    assert metrics["steps"] == 1
    assert metrics["reward_margin"] == pytest.approx(0.0, abs=1e-4)


def test_spin_refuses_multi_turn_examples(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}) + "\n")
    req = {"stage": "spin", "output": str(tmp_path / "out"), "model": TINY, "data": str(data)}
    proc = run_stage("spin", req, tmp_path)
    assert proc.returncode == 2
    assert "example 1" in proc.stderr and "single-turn" in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_mixed_schedule_end_to_end_with_cream_run(tmp_path):
    doc = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
    spec = doc["spec"]
    del spec["iterations"]
    spec["schedule"] = [{"kind": "sft"}, {"kind": "spin", "lambda": 0.5},
                        {"kind": "selfReward"}]
    spec["data"]["maxPrompts"] = 6
    spec["sft"]["epochs"] = 2
    spec["evaluation"]["tasks"] = spec["evaluation"]["tasks"][:1]
    spec["evaluation"]["tasks"][0]["limit"] = 3
    proc, out = cream_run(doc, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["iteration"]: r for r in json.loads((out / "results.json").read_text())
            ["iterations"]}
    assert sorted(rows) == [0, 1, 2]
    assert rows[1]["kind"] == "spin" and rows[2]["kind"] == "selfReward"
    spin = json.loads((out / "iter-1/spin/manifest.json").read_text())
    assert rows[1]["pairs"] == spin["metrics"]["pairs"] > 0
    assert rows[1]["pairs"] + rows[1]["dropped"] == 6
    assert spin["request"]["model"] == str(out / "models/M1")
    dpo = json.loads((out / "models/M2/manifest.json").read_text())
    assert dpo["request"]["beta"] == 0.5
    assert rows[1]["reward_margin"] == dpo["metrics"]["reward_margin"]
    assert rows[1]["reward_accuracy"] == dpo["metrics"]["reward_accuracy"]
    assert dpo["request"]["pairs"] == str(out / "iter-1/spin/pairs.jsonl")
    # The CREAM iteration after SPIN: M2 samples, M2, M1 and M0 score, M2 -> M3.
    cons = json.loads((out / "iter-2/consistency/manifest.json").read_text())
    assert rows[2]["consistency_rate"] == cons["metrics"]["consistency_rate"]
    assert cons["request"]["previous2"] == str(out / "iter-2/score-m0/scores.jsonl")
    assert rows[2]["model_uri"] == str(out / "models/M3")
    assert (out / "models/M3/model.safetensors").is_file()
    assert set(rows[2]["accuracy"]) == {"arc_easy"}
    table = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:2] == ["iteration", "step"])
    assert table[header + 3].split()[:2] == ["1", "spin"]

