"""A run as a schedule of steps: what the spec accepts and refuses (with field paths), and the
plan each schedule makes. The API server's verdict on the same documents is checked in
tests/cluster/test_spec_agreement.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cream_operator import pipeline, specfile

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())


def _doc(schedule=None, **changes) -> dict:
    doc = copy.deepcopy(TINY)
    doc["spec"].pop("iterations")
    doc["spec"]["data"]["prompts"] = doc["spec"]["data"]["prompts"][:1]
    if schedule is not None:
        doc["spec"]["schedule"] = schedule
    for path, value in changes.items():
        node = doc["spec"]
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def _problems(doc) -> list[str]:
    with pytest.raises(specfile.SpecError) as info:
        specfile.parse(doc)
    return info.value.problems


MIXED = [{"kind": "sft"}, {"kind": "spin", "iterations": 2, "lambda": 0.5},
         {"kind": "selfReward", "iterations": 2, "reward": "implicit"}]


def test_no_schedule_plans_exactly_sft_then_cream_iterations():
    doc = _doc()
    doc["spec"]["iterations"] = 2
    explicit = _doc([{"kind": "sft"}, {"kind": "selfReward", "iterations": 2}])
    plain = pipeline.plan(specfile.parse(doc).spec, "r")
    scheduled = pipeline.plan(specfile.parse(explicit).spec, "r")
    assert [(s.key, s.request, s.after) for s in plain] == \
        [(s.key, s.request, s.after) for s in scheduled]


def test_mixed_schedule_plan_models_and_losses():
    steps = pipeline.plan(specfile.parse(_doc(MIXED)).spec, "r")
    by_key = {s.key: s for s in steps}
    assert [s.key for s in steps if s.stage != "evaluate"] == [
        "iter-0/sft",
        "iter-1/spin", "iter-1/dpo",
        "iter-2/spin", "iter-2/dpo",
        "iter-3/sample", "iter-3/score-m3", "iter-3/score-m2", "iter-3/score-m1",
        "iter-3/consistency", "iter-3/dpo",
        "iter-4/sample", "iter-4/score-m4", "iter-4/score-m3", "iter-4/score-m2",
        "iter-4/consistency", "iter-4/dpo",
    ]
    # SPIN: M1 answers the SFT prompts, its pairs train M1 -> M2 with beta = lambda.
    spin = by_key["iter-1/spin"].request
    assert (spin.model, spin.data) == ("r/models/M1", TINY["spec"]["data"]["sft"])
    dpo = by_key["iter-1/dpo"].request
    assert (dpo.model, dpo.output, dpo.pairs, dpo.beta) == \
        ("r/models/M1", "r/models/M2", "r/iter-1/spin/pairs.jsonl", 0.5)
    assert by_key["iter-2/spin"].after == ("iter-1/dpo",)
    # CREAM after SPIN: M3 is the current model, M2 the previous, M1 the one before.
    cons = by_key["iter-3/consistency"].request
    assert cons.iteration == 3 and cons.current.endswith("score-m3/scores.jsonl")
    assert by_key["iter-3/dpo"].request.beta == TINY["spec"]["dpo"]["beta"]
    assert by_key["iter-4/dpo"].output == "r/models/M5"
    assert by_key["iter-4/evaluate"].request.model == "r/models/M5"
    # Each step waits only for steps before it.
    keys = [s.key for s in steps]
    for i, step in enumerate(steps):
        assert all(keys.index(a) < i for a in step.after), step.key


def test_a_schedule_without_sft_starts_from_m0():
    steps = pipeline.plan(specfile.parse(_doc([{"kind": "spin"}], **{"data.sft": TINY["spec"][
        "data"]["sft"]})).spec, "r")
    by_key = {s.key: s for s in steps}
    assert "iter-0/sft" not in by_key
    assert by_key["iter-1/spin"].request.model == TINY["spec"]["model"]["base"]
    assert by_key["iter-1/dpo"].output == "r/models/M1"
    assert by_key["iter-0/evaluate"].request.model == TINY["spec"]["model"]["base"]
    assert by_key["iter-1/dpo"].request.beta == 0.1  # SPIN's default lambda


def test_spin_results_rows_say_their_step():
    spec = specfile.parse(_doc(MIXED)).spec
    steps = pipeline.plan(spec, "r")
    metrics = {"iter-1/spin": {"pairs": 7, "dropped": 1}, "iter-1/dpo": {},
               "iter-3/consistency": {"consistency_rate": 0.6, "pairs": 5, "dropped": 0}}
    rows = {r.iteration: r for r in pipeline.results(steps, metrics, "r", spec)}
    assert (rows[1].kind, rows[1].pairs, rows[1].dropped, rows[1].model_uri) == \
        ("spin", 7, 1, "r/models/M2")
    assert (rows[3].kind, rows[3].consistency_rate) == ("selfReward", 0.6)


@pytest.mark.parametrize(("schedule", "changes", "path", "words"), [
    ([{"kind": "spin"}, {"kind": "sft"}], {}, "spec.schedule: step [1]",
     "sft step can only be the first"),
    ([{"kind": "sft"}, {"kind": "sft"}], {}, "spec.schedule: step [1]",
     "only be the first step, once"),
    ([{"kind": "sft"}, {"kind": "spin"}], {"model.sft": "hf://org/m1"},
     "spec.schedule: step [0]", "model.sft is already M1"),
    ([{"kind": "spin"}], {"data.sft": None, "model.sft": "hf://org/m1"},
     "spec.schedule: step [0]", "spin step needs data.sft"),
    ([{"kind": "selfReward"}], {}, "spec.schedule: step [0]", "there is none"),
    ([{"kind": "sft"}, {"kind": "spin", "iterations": 11}, {"kind": "selfReward",
                                                            "iterations": 10}], {},
     "spec.schedule", "21 iterations in all"),
    ([{"kind": "sft", "iterations": 2}], {}, "spec.schedule[0]", "iterations applies to"),
    ([{"kind": "sft"}, {"kind": "selfReward", "lambda": 0.1}], {}, "spec.schedule[1]",
     "lambda applies to step kinds spin only"),
    ([{"kind": "sft"}, {"kind": "spin", "reward": "implicit"}], {}, "spec.schedule[1]",
     "reward applies to step kinds selfReward only"),
    ([{"kind": "sft"}, {"kind": "dance"}], {}, "spec.schedule[1].kind", ""),
    ([{"kind": "sft"}, {"kind": "spin", "lambda": 0}], {}, "spec.schedule[1].lambda", ""),
    ([], {}, "spec.schedule", ""),
    ([{"kind": "sft"}, {"kind": "spin"}, {"kind": "selfReward", "iterations": 2}],
     {"data.prompts": ["builtin://data/prompts-1.jsonl", "builtin://data/prompts-2.jsonl"]},
     "spec", "2 prompt sets for 3 iterations"),
])
def test_impossible_schedules_are_refused_with_the_field_path(schedule, changes, path, words):
    problems = _problems(_doc(schedule, **changes))
    assert any(p.startswith(f"{path}") and words in p for p in problems), problems


@pytest.mark.parametrize("schedule", [
    MIXED,
    [{"kind": "spin"}],  # from M0: it exists
    [{"kind": "sft"}],  # SFT alone, then the baseline evaluation
    [{"kind": "spin"}, {"kind": "selfReward"}],  # the implicit reward compares M1 with M0
])
def test_possible_schedules_are_accepted(schedule):
    spec = specfile.parse(_doc(schedule)).spec
    assert pipeline.plan(spec, "r")


def test_a_first_self_reward_step_is_fine_when_m1_is_given():
    spec = specfile.parse(_doc([{"kind": "selfReward"}], **{"model.sft": "hf://org/m1",
                                                            "data.sft": None})).spec
    assert pipeline.plan(spec, "r")[0].request.model == "hf://org/m1"


def test_spin_runs_on_one_pod():
    problems = _problems(_doc(MIXED, **{"resources.spin": {"nodes": 2}}))
    assert any(p.startswith("spec.resources") and "spin.nodes is 2" in p for p in problems)


JUDGE = {"kind": "selfReward", "reward": "judge",
         "judge": {"judgements": 2, "consistency": True, "pattern": r"(\d)", "maxScore": 9}}


def test_judge_round_plan():
    spec = specfile.parse(_doc([{"kind": "sft"}, JUDGE, {"kind": "selfReward",
                                                         "reward": "judge"}])).spec
    steps = pipeline.plan(spec, "r")
    by_key = {s.key: s for s in steps}
    assert [s.key for s in steps if s.iteration == 1] == [
        "iter-1/sample", "iter-1/score-m1", "iter-1/judge-m1", "iter-1/judge-m0",
        "iter-1/consistency", "iter-1/dpo", "iter-1/evaluate"]
    judge = by_key["iter-1/judge-m1"].request
    assert (judge.model, judge.judgements, judge.pattern, judge.max_score) == \
        ("r/models/M1", 2, r"(\d)", 9.0)
    assert "{prompt}" in judge.template and "{response}" in judge.template  # the default
    assert by_key["iter-1/judge-m0"].request.model == TINY["spec"]["model"]["base"]
    cons = by_key["iter-1/consistency"].request
    assert (cons.reward, cons.judgements, cons.previous_judgements, cons.current) == (
        "judge", "r/iter-1/judge-m1/judgements.jsonl", "r/iter-1/judge-m0/judgements.jsonl",
        "r/iter-1/score-m1/scores.jsonl")
    # Without judge consistency only the current model judges: plain SRLM.
    assert [s.key for s in steps if s.iteration == 2 and s.stage == "judge"] == \
        ["iter-2/judge-m2"]
    assert by_key["iter-2/consistency"].request.previous_judgements is None
    assert by_key["iter-2/judge-m2"].request.pattern == r"Score:\s*([0-9]+(?:\.[0-9]+)?)"


def test_judge_rows_carry_the_current_judges_figures():
    spec = specfile.parse(_doc([{"kind": "sft"}, JUDGE])).spec
    steps = pipeline.plan(spec, "r")
    metrics = {"iter-1/judge-m1": {"parse_failures": 3, "score_mean": 4.5},
               "iter-1/judge-m0": {"parse_failures": 9, "score_mean": 1.0}}
    (row,) = [r for r in pipeline.results(steps, metrics, "r", spec) if r.iteration == 1]
    assert (row.kind, row.judge_parse_failures, row.judge_score_mean) == ("selfReward", 3, 4.5)


@pytest.mark.parametrize(("judge", "path", "words"), [
    ({"template": "Rate {prompt}"}, "spec.schedule[1].judge.template", "{response}"),
    ({"pattern": r"Score: \d"}, "spec.schedule[1].judge.pattern", "group capturing"),
    ({"pattern": r"Score: ([0-9]"}, "spec.schedule[1].judge.pattern", "not a regular"),
    ({"minScore": 5, "maxScore": 1}, "spec.schedule[1].judge.maxScore", "not be above maxScore"),
    ({"judgements": 0}, "spec.schedule[1].judge.judgements", ""),
])
def test_bad_judge_settings_are_refused_with_the_field_path(judge, path, words):
    problems = _problems(_doc([{"kind": "sft"}, {"kind": "selfReward", "reward": "judge",
                                                 "judge": judge}]))
    assert any(p.startswith(path) and words in p for p in problems), problems


def test_judge_settings_belong_to_judge_rewarding():
    problems = _problems(_doc([{"kind": "sft"}, {"kind": "selfReward", "judge": {}}]))
    assert any("spec.schedule[1]" in p and "need reward: judge" in p for p in problems)
    problems = _problems(_doc([{"kind": "sft"}, {"kind": "spin", "judge": {}}]))
    assert any("spec.schedule[1]" in p and "judge applies to" in p for p in problems)


def test_a_first_judge_step_from_m0_needs_no_previous_model_unless_it_regularises():
    plain = specfile.parse(_doc([{"kind": "selfReward", "reward": "judge"}])).spec
    assert pipeline.plan(plain, "r")[0].request.model == TINY["spec"]["model"]["base"]
    problems = _problems(_doc([{"kind": "selfReward", "reward": "judge",
                                "judge": {"consistency": True}}]))
    assert any(p.startswith("spec.schedule: step [0]") and "judge consistency" in p
               for p in problems), problems


REWARD_MODEL = {"kind": "selfReward", "reward": "rewardModel",
                "rewardModel": {"uri": "builtin://tiny-cloud", "type": "cloud",
                                "critiqueTokens": 64}}


def test_a_reward_model_step_ranks_with_its_reward_stage_and_weighs_pairs_one():
    """From M0 (no previous model needed): sample, M0's scores as dpo's reference, the reward
    model's stage, then consistency on its rewards."""
    spec = specfile.parse(_doc([REWARD_MODEL])).spec
    steps = pipeline.plan(spec, "r")
    by_key = {s.key: s for s in steps}
    assert [s.key for s in steps if s.iteration == 1] == [
        "iter-1/sample", "iter-1/score-m0", "iter-1/reward", "iter-1/consistency",
        "iter-1/dpo", "iter-1/evaluate"]
    reward = by_key["iter-1/reward"].request
    assert (reward.model, reward.model_type, reward.critique_tokens, reward.responses) == (
        "builtin://tiny-cloud", "cloud", 64, "r/iter-1/sample/responses.jsonl")
    assert by_key["iter-1/reward"].after == ("iter-1/sample",)
    cons = by_key["iter-1/consistency"].request
    assert (cons.reward, cons.rewards, cons.current, cons.previous) == (
        "rewardModel", "r/iter-1/reward/rewards.jsonl", "r/iter-1/score-m0/scores.jsonl", None)
    assert set(by_key["iter-1/consistency"].after) == {"iter-1/score-m0", "iter-1/reward"}
    assert by_key["iter-1/dpo"].request.model == TINY["spec"]["model"]["base"]

    metrics = {"iter-1/reward": {"reward_mean": -0.25, "reward_std": 0.5},
               "iter-1/consistency": {"pairs": 4, "dropped": 0, "consistency_rate": None}}
    (row,) = [r for r in pipeline.results(steps, metrics, "r", spec) if r.iteration == 1]
    assert (row.kind, row.reward_model_mean, row.reward_model_std, row.pairs,
            row.consistency_rate) == ("selfReward", -0.25, 0.5, 4, None)


@pytest.mark.parametrize(("step", "path", "words"), [
    ({"kind": "selfReward", "reward": "rewardModel"}, "spec.schedule[1]", "needs rewardModel"),
    ({"kind": "selfReward", "rewardModel": {"uri": "hf://o/rm", "type": "classic"}},
     "spec.schedule[1]", "needs reward: rewardModel"),
    ({"kind": "spin", "rewardModel": {"uri": "hf://o/rm", "type": "classic"}},
     "spec.schedule[1]", "rewardModel applies to step kinds selfReward only"),
    ({**REWARD_MODEL, "rewardModel": {"uri": "hf://o/rm", "type": "scalar"}},
     "spec.schedule[1].rewardModel.type", ""),
    ({**REWARD_MODEL, "rewardModel": {"type": "classic"}}, "spec.schedule[1].rewardModel.uri",
     ""),
    ({**REWARD_MODEL, "rewardModel": {"uri": "builtin://tiny-judge", "type": "classic"}},
     "spec.schedule[1].rewardModel.uri", "builtin models are builtin://tiny-llama, "
     "builtin://tiny-reward, builtin://tiny-cloud"),
])
def test_bad_reward_model_settings_are_refused_with_the_field_path(step, path, words):
    problems = _problems(_doc([{"kind": "sft"}, step]))
    assert any(p.startswith(path) and words in p for p in problems), problems


def _stop_spec(schedule, **rule):
    doc = _doc(schedule)
    doc["spec"]["earlyStopping"] = rule
    return specfile.parse(doc).spec


def test_early_stop_on_consistency_with_patience_skips_iterations_without_the_metric():
    spec = _stop_spec([{"kind": "sft"}, {"kind": "selfReward"}, {"kind": "spin"},
                       {"kind": "selfReward", "iterations": 3}],
                      metric="consistencyRate", minDelta=0.05, patience=2)
    steps = pipeline.plan(spec, "r")
    rates = {1: 0.6, 3: 0.64, 4: 0.9, 5: 0.91}  # iteration 2 is SPIN's: no rate
    metrics = {f"iter-{t}/consistency": {"consistency_rate": v} for t, v in rates.items()}
    assert pipeline.early_stop(spec, steps, {k: metrics[k] for k in list(metrics)[:2]}) is None
    # 0.64 < 0.6 + 0.05 (a miss), then 0.9 improves (reset), then 0.91 misses once: no stop.
    assert pipeline.early_stop(spec, steps, metrics) is None
    metrics["iter-4/consistency"] = {"consistency_rate": 0.62}  # two misses in a row
    stop = pipeline.early_stop(spec, steps, metrics)
    assert (stop.iteration, stop.step) == (4, "iter-4/consistency")
    assert "0.62 at iteration 4 did not improve on the best 0.64 by 0.05 (2 time(s)" \
        in stop.reason
    assert {s.iteration for s in pipeline.until(steps, stop)} == {0, 1, 2, 3, 4}


def test_early_stop_on_a_tasks_accuracy_counts_the_baseline_and_waits_in_order():
    spec = _stop_spec([{"kind": "sft"}, {"kind": "selfReward", "iterations": 3}],
                      metric="accuracy", task="arc_easy")
    steps = pipeline.plan(spec, "r")
    acc = {0: 0.30, 1: 0.40, 2: 0.40}
    metrics = {f"iter-{t}/evaluate": {"accuracy": {"arc_easy": v, "siqa": 1.0}}
               for t, v in acc.items()}
    stop = pipeline.early_stop(spec, steps, metrics)
    assert (stop.iteration, stop.step) == (2, "iter-2/evaluate")
    assert "arc_easy accuracy 0.4 at iteration 2" in stop.reason
    # A value not known yet stops the scan: later values wait for it.
    del metrics["iter-1/evaluate"]
    assert pipeline.early_stop(spec, steps, metrics) is None
    # At the last iteration there is nothing left to stop.
    metrics.update({"iter-1/evaluate": {"accuracy": {"arc_easy": 0.4}},
                    "iter-2/evaluate": {"accuracy": {"arc_easy": 0.5}},
                    "iter-3/evaluate": {"accuracy": {"arc_easy": 0.1}}})
    assert pipeline.early_stop(spec, steps, metrics) is None


@pytest.mark.parametrize(("rule", "path", "words"), [
    ({"metric": "accuracy"}, "spec.earlyStopping", "task names"),
    ({"metric": "consistencyRate", "task": "arc_easy"}, "spec.earlyStopping", "task names"),
    ({"metric": "accuracy", "task": "mmlu"}, "spec", "'mmlu' is not one of evaluation.tasks"),
    ({"metric": "accuracy", "task": "arc_easy", "minDelta": -0.1},
     "spec.earlyStopping.minDelta", ""),
    ({"metric": "loss"}, "spec.earlyStopping.metric", ""),
])
def test_bad_early_stopping_is_refused_with_the_field_path(rule, path, words):
    doc = _doc()
    doc["spec"]["earlyStopping"] = rule
    problems = _problems(doc)
    assert any(p.startswith(path) and words in p for p in problems), problems
