"""The run's plan: which models each iteration scores, what every stage waits for."""

import copy
from pathlib import Path

import yaml

from cream_operator import pipeline, specfile

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())


def _spec(**changes):
    doc = copy.deepcopy(TINY)
    doc["spec"].update(changes)
    return specfile.parse(doc).spec


def test_plan_of_two_iterations():
    steps = pipeline.plan(_spec(), "s3://b/root")
    assert [s.key for s in steps] == [
        "iter-0/sft", "iter-0/evaluate",
        "iter-1/sample", "iter-1/score-m1", "iter-1/score-m0", "iter-1/consistency",
        "iter-1/dpo", "iter-1/evaluate",
        "iter-2/sample", "iter-2/score-m2", "iter-2/score-m1", "iter-2/score-m0",
        "iter-2/consistency", "iter-2/dpo", "iter-2/evaluate",
    ]
    keys = [s.key for s in steps]
    assert len(set(keys)) == len(keys)
    # Each step waits only for steps that come before it.
    for i, step in enumerate(steps):
        assert all(keys.index(a) < i for a in step.after), step.key


def test_models_flow_from_sft_through_dpo():
    by_key = {s.key: s for s in pipeline.plan(_spec(), "s3://b/root")}
    assert by_key["iter-0/sft"].request.model == "builtin://tiny-llama"
    assert by_key["iter-0/sft"].output == "s3://b/root/models/M1"
    assert by_key["iter-1/sample"].request.model == "s3://b/root/models/M1"
    assert by_key["iter-1/dpo"].request.model == "s3://b/root/models/M1"
    assert by_key["iter-1/dpo"].output == "s3://b/root/models/M2"
    assert by_key["iter-2/sample"].request.model == "s3://b/root/models/M2"
    assert by_key["iter-2/sample"].after == ("iter-1/dpo",)
    assert by_key["iter-1/evaluate"].request.model == "s3://b/root/models/M2"
    assert by_key["iter-0/evaluate"].request.model == "s3://b/root/models/M1"
    # M0 is the base model itself, scored in place.
    assert by_key["iter-2/score-m0"].request.model == "builtin://tiny-llama"


def test_consistency_reads_the_right_scores():
    by_key = {s.key: s for s in pipeline.plan(_spec(), "r")}
    one = by_key["iter-1/consistency"].request
    assert (one.current, one.previous, one.previous2) == (
        "r/iter-1/score-m1/scores.jsonl", "r/iter-1/score-m0/scores.jsonl", None)
    two = by_key["iter-2/consistency"].request
    assert (two.current, two.previous, two.previous2) == (
        "r/iter-2/score-m2/scores.jsonl", "r/iter-2/score-m1/scores.jsonl",
        "r/iter-2/score-m0/scores.jsonl")
    assert set(by_key["iter-2/consistency"].after) == {
        "iter-2/score-m2", "iter-2/score-m1", "iter-2/score-m0"}
    assert by_key["iter-2/dpo"].request.pairs == "r/iter-2/consistency/pairs.jsonl"


def test_no_model_is_scored_twice_in_an_iteration():
    steps = pipeline.plan(_spec(iterations=4, data={**TINY["spec"]["data"],
                                                    "prompts": ["p.jsonl"]}), "r")
    for t in range(1, 5):
        models = [s.request.model for s in steps if s.iteration == t and s.stage == "score"]
        assert len(models) == len(set(models)) == min(t + 1, 3)


def test_a_given_sft_model_skips_the_sft_stage():
    doc = copy.deepcopy(TINY)
    doc["spec"]["model"]["sft"] = "s3://bkt/my-sft"
    del doc["spec"]["data"]["sft"]
    steps = pipeline.plan(specfile.parse(doc).spec, "r")
    assert steps[0].key == "iter-0/evaluate" and steps[0].after == ()
    by_key = {s.key: s for s in steps}
    assert by_key["iter-1/sample"].request.model == "s3://bkt/my-sft"
    assert by_key["iter-1/sample"].after == ()


def test_runnable_and_current():
    steps = pipeline.plan(_spec(), "r")
    assert [s.key for s in pipeline.runnable(steps, set())] == ["iter-0/sft"]
    done = {"iter-0/sft", "iter-0/evaluate", "iter-1/sample"}
    assert [s.key for s in pipeline.runnable(steps, done)] == ["iter-1/score-m1",
                                                               "iter-1/score-m0"]
    assert [s.key for s in pipeline.runnable(steps, done, {"iter-1/score-m1"})] == [
        "iter-1/score-m0"]
    assert pipeline.current(steps, done).key == "iter-1/score-m1"
    assert pipeline.current(steps, {s.key for s in steps}) is None


def test_results_from_manifest_metrics():
    spec = _spec()
    steps = pipeline.plan(spec, "r")
    metrics = {
        "iter-0/sft": {}, "iter-0/evaluate": {"accuracy": {"gsm8k": 0.1}},
        "iter-1/consistency": {"consistency_rate": 0.7, "pairs": 10, "dropped": 2},
        "iter-1/dpo": {}, "iter-1/evaluate": {"accuracy": {"gsm8k": 0.2}},
    }
    res = pipeline.results(steps, metrics, "r", spec)
    assert [r.iteration for r in res] == [0, 1]
    assert res[0].accuracy == {"gsm8k": 0.1} and res[0].model_uri == "r/models/M1"
    assert (res[1].consistency_rate, res[1].pairs, res[1].dropped) == (0.7, 10, 2)
    assert res[1].model_uri == "r/models/M2"


def test_prompt_sets_per_iteration():
    by_key = {s.key: s for s in pipeline.plan(_spec(), "r")}
    assert by_key["iter-1/sample"].request.prompts.endswith("prompts-1.jsonl")
    assert by_key["iter-2/sample"].request.prompts.endswith("prompts-2.jsonl")
    assert by_key["iter-1/sample"].request.seed != by_key["iter-2/sample"].request.seed
