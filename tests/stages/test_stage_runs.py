"""Every stage end to end on the tiny model, run as the operator runs it (a subprocess).

One chain runs once per module: sft M0 -> M1, evaluate M1, sample with M1, score with M1 and M0,
consistency (t = 1), dpo M1 -> M2. Each test checks what a user relies on: the outputs, the
manifest's metrics, and that running a stage again is a no-op.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from stage_helpers import TINY, mtimes, run_stage, termination_message

from cream_stages.logprobs import score_encodings
from cream_stages.models import load_model
from cream_stages.tokenization import encode_pair

TRAIN = {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_length": 96}
TASKS = [
    {"name": n, "uri": f"builtin://data/{n}.jsonl", "limit": 3,
     "format": "gsm8k" if n == "gsm8k" else "multiple_choice"}
    for n in ("arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k")
]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _manifest(directory):
    return json.loads((directory / "manifest.json").read_text())


def _one_engine(metrics: dict) -> dict:
    """The metrics without the engine figures, after checking those say one engine on one node
    did it all."""
    assert metrics.pop("data_parallel") == 1
    assert metrics.pop("nodes") == 1
    (shard,) = metrics.pop("shards")
    assert shard["node"] == 0
    assert shard["batches"] >= 1 and shard["tokens"] > 0 and shard["seconds"] >= 0
    return metrics


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_path):
    root = tmp_path_factory.mktemp("chain")
    d = {k: root / k for k in ("M1", "eval", "sample", "score1", "score0", "cons", "M2")}
    responses = str(d["sample"] / "responses.jsonl")
    requests = {
        "sft": ("sft", {"output": str(d["M1"]), "model": TINY,
                        "data": "builtin://data/sft.jsonl", "train": TRAIN}),
        "evaluate": ("evaluate", {"output": str(d["eval"]), "model": str(d["M1"]),
                                  "tasks": TASKS, "max_tokens": 12, "batch_size": 8}),
        "sample": ("sample", {"output": str(d["sample"]), "model": str(d["M1"]),
                              "prompts": "builtin://data/prompts-2.jsonl", "n": 3,
                              "max_tokens": 12, "max_prompts": 6, "seed": 7}),
        "score1": ("score", {"output": str(d["score1"]), "model": str(d["M1"]),
                             "model_index": 1, "responses": responses, "max_length": 96}),
        "score0": ("score", {"output": str(d["score0"]), "model": TINY, "model_index": 0,
                             "responses": responses, "max_length": 96, "batch_size": 5}),
        "cons": ("consistency", {"output": str(d["cons"]), "iteration": 1,
                                 "responses": responses,
                                 "current": str(d["score1"] / "scores.jsonl"),
                                 "previous": str(d["score0"] / "scores.jsonl"),
                                 "strategy": "dynamic"}),
        "dpo": ("dpo", {"output": str(d["M2"]), "model": str(d["M1"]),
                        "pairs": str(d["cons"] / "pairs.jsonl"), "beta": 0.1,
                        "train": {**TRAIN, "batch_size": 2}}),
    }
    for name, (stage, req) in requests.items():
        proc = run_stage(stage, {"stage": stage, **req}, root, name)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    return root, d, requests


def _rerun_is_no_op(root, name, stage, request, directory):
    before = mtimes(directory)
    proc = run_stage(stage, {"stage": stage, **request}, root, f"{name}-again")
    assert proc.returncode == 0 and "already done" in proc.stdout
    assert mtimes(directory) == before
    # A no-op rerun (a retried Job) still reports the stage's metrics to the operator.
    assert json.loads(termination_message(root, f"{name}-again")) == {
        "stage": stage, "metrics": _manifest(directory)["metrics"]}


def test_sft_writes_a_loadable_checkpoint_and_its_metrics(chain):
    root, d, requests = chain
    files = {p.name for p in d["M1"].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "manifest.json"} <= files
    metrics = _manifest(d["M1"])["metrics"]
    assert metrics["examples"] == 66 and metrics["steps"] == math.ceil(66 / 8)
    assert metrics["loss_last"] < metrics["loss_first"]
    model, tokenizer, _ = load_model(str(d["M1"]))
    base, _, _ = load_model(TINY)
    # Trained, same vocabulary (no token added for padding).
    assert len(tokenizer) == base.config.vocab_size == model.config.vocab_size
    assert not torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    _rerun_is_no_op(root, "sft", *requests["sft"], d["M1"])


def test_evaluate_predictions_and_accuracy(chain):
    root, d, requests = chain
    rows = _rows(d["eval"] / "predictions.jsonl")
    assert len(rows) == 15
    assert {r["task"] for r in rows} == {t["name"] for t in TASKS}
    assert all(set(r) == {"task", "id", "prediction", "answer", "correct", "output"}
               for r in rows)
    metrics = _one_engine(_manifest(d["eval"])["metrics"])
    assert set(metrics) == {"accuracy", "counts"}
    assert metrics["counts"] == {t["name"]: 3 for t in TASKS}
    for task, acc in metrics["accuracy"].items():
        correct = sum(r["correct"] for r in rows if r["task"] == task)
        assert acc == pytest.approx(correct / 3)
    _rerun_is_no_op(root, "evaluate", *requests["evaluate"], d["eval"])


def test_sample_is_deterministic_given_the_seed(chain):
    root, d, requests = chain
    rows = _rows(d["sample"] / "responses.jsonl")
    assert [r["prompt_id"] for r in rows] == [f"p2-{i:03d}" for i in range(1, 7)]
    assert all(len(r["responses"]) == 3 for r in rows)
    assert _one_engine(_manifest(d["sample"])["metrics"]) == {"prompts": 6, "responses": 18}
    stage, req = requests["sample"]
    again = root / "sample-again"
    proc = run_stage(stage, {"stage": stage, **req, "output": str(again)}, root, "sample-seed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (again / "responses.jsonl").read_text() == (d["sample"] / "responses.jsonl").read_text()
    _rerun_is_no_op(root, "sample", *requests["sample"], d["sample"])


def test_score_rows_match_responses(chain):
    root, d, requests = chain
    responses = _rows(d["sample"] / "responses.jsonl")
    for name, index in (("score1", 1), ("score0", 0)):
        rows = _rows(d[name] / "scores.jsonl")
        assert [r["prompt_id"] for r in rows] == [r["prompt_id"] for r in responses]
        assert all(len(r["logps"]) == len(r["lengths"]) == 3 for r in rows)
        assert all(v < 0 for r in rows for v in r["logps"])
        assert _one_engine(_manifest(d[name])["metrics"]) == {"responses": 18,
                                                              "model_index": index}
    _rerun_is_no_op(root, "score1", *requests["score1"], d["score1"])


def test_consistency_outputs_and_metrics(chain):
    _, d, _ = chain
    pairs = _rows(d["cons"] / "pairs.jsonl")
    per_prompt = _rows(d["cons"] / "consistency.jsonl")
    metrics = _manifest(d["cons"])["metrics"]
    assert metrics["prompts"] == 6 == len(per_prompt)
    assert metrics["pairs"] == len(pairs) and metrics["dropped"] == 6 - len(pairs)
    assert metrics["method"] == "kendall" and metrics["strategy"] == "dynamic"
    c_by_id = {r["prompt_id"]: r["c"] for r in per_prompt if r["kept"]}
    assert metrics["consistency_rate"] == pytest.approx(sum(c_by_id.values()) / len(c_by_id))
    assert all(p["weight"] == c_by_id[p["prompt_id"]] for p in pairs)
    # The operator reads these metrics from the Pod's termination message.
    root = d["cons"].parent
    assert json.loads(termination_message(root, "cons")) == {"stage": "consistency",
                                                              "metrics": metrics}


def test_reference_logps_reused_from_score_equal_a_fresh_forward_pass(chain):
    _, d, requests = chain
    model, tokenizer, _ = load_model(str(d["M1"]))
    max_length = requests["score1"][1]["max_length"]
    for pair in _rows(d["cons"] / "pairs.jsonl"):
        encs = [encode_pair(tokenizer, pair["prompt"], pair[k], max_length)
                for k in ("chosen", "rejected")]
        fresh = score_encodings(model, encs, tokenizer.pad_token_id, batch_size=1)
        assert fresh == pytest.approx([pair["ref_chosen_logp"], pair["ref_rejected_logp"]],
                                      abs=1e-4)


def test_dpo_trains_from_the_pairs(chain):
    root, d, requests = chain
    metrics = _manifest(d["M2"])["metrics"]
    n_pairs = len(_rows(d["cons"] / "pairs.jsonl"))
    assert metrics["pairs"] == n_pairs and metrics["steps"] == math.ceil(n_pairs / 2)
    # The first step starts at the reference: z = 0, so the loss is log 2 whatever C is.
    assert metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-4)
    assert (d["M2"] / "model.safetensors").is_file()
    _rerun_is_no_op(root, "dpo", *requests["dpo"], d["M2"])


def test_dpo_refuses_pairs_scored_with_another_max_length(chain):
    root, d, requests = chain
    stage, req = requests["dpo"]
    bad = {**req, "output": str(root / "M2-bad"), "train": {**req["train"], "max_length": 16}}
    proc = run_stage(stage, {"stage": stage, **bad}, root, "dpo-bad")
    assert proc.returncode == 2
    assert "pairs.jsonl" in proc.stderr and "max_length" in proc.stderr
    assert not (root / "M2-bad" / "manifest.json").exists()


def test_dpo_is_deterministic_given_the_seed(chain):
    root, d, requests = chain
    stage, req = requests["dpo"]
    again = root / "M2-again"
    proc = run_stage(stage, {"stage": stage, **req, "output": str(again)}, root, "dpo-seed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights = "model.safetensors"
    assert (again / weights).read_bytes() == (d["M2"] / weights).read_bytes()
    assert _manifest(again)["metrics"] == _manifest(d["M2"])["metrics"]
