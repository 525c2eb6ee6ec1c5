"""The operator's metrics: per-run series follow the status and go away with the run."""

from prometheus_client import generate_latest

from cream_operator.metrics import Metrics
from cream_operator.spec import CreamRunStatus, IterationResult


def _status(phase, results):
    return CreamRunStatus(phase=phase, results=results)


def _value(m: Metrics, name, **labels):
    return m.registry.get_sample_value(name, labels)


def test_series_follow_the_status_and_vanish_with_the_run():
    m = Metrics()
    results = [IterationResult(iteration=0, accuracy={"gsm8k": 0.1}),
               IterationResult(iteration=1, consistency_rate=0.7, pairs=12,
                               accuracy={"gsm8k": 0.2, "arc_easy": 0.5})]
    m.observe_run("ml", "tiny", _status("Running", results))
    m.observe_run("ml", "other", _status("Succeeded", []))
    assert _value(m, "cream_consistency_rate", namespace="ml", run="tiny", iteration="1") == 0.7
    assert _value(m, "cream_dpo_pairs", namespace="ml", run="tiny", iteration="1") == 12
    assert _value(m, "cream_eval_accuracy", namespace="ml", run="tiny", iteration="0",
                  task="gsm8k") == 0.1
    assert _value(m, "cream_runs", phase="Running") == 1
    assert _value(m, "cream_runs", phase="Succeeded") == 1
    assert _value(m, "cream_runs", phase="Failed") == 0

    m.forget_run("ml", "tiny")
    text = generate_latest(m.registry).decode()
    assert 'run="tiny"' not in text
    assert _value(m, "cream_runs", phase="Running") == 0


def test_series_of_iterations_no_longer_in_the_status_are_removed():
    m = Metrics()
    m.observe_run("ml", "r", _status("Running", [IterationResult(iteration=1, pairs=3)]))
    m.observe_run("ml", "r", _status("Running", []))
    assert _value(m, "cream_dpo_pairs", namespace="ml", run="r", iteration="1") is None


def test_stage_durations_failures_and_reconciles():
    m = Metrics()
    m.stage_finished("dpo", 42.0)
    m.stage_failed("score")
    m.reconcile.observe(0.01)
    assert _value(m, "cream_stage_duration_seconds_count", stage="dpo") == 1
    assert _value(m, "cream_stage_duration_seconds_sum", stage="dpo") == 42.0
    assert _value(m, "cream_stage_failures_total", stage="score") == 1
    assert _value(m, "cream_reconcile_duration_seconds_count") == 1


def test_every_stage_has_its_failure_and_duration_series_from_the_start():
    m = Metrics()
    for stage in ("sft", "sample", "score", "consistency", "dpo", "evaluate"):
        assert _value(m, "cream_stage_failures_total", stage=stage) == 0
        assert _value(m, "cream_stage_duration_seconds_count", stage=stage) == 0


def test_step_kinds_figures_follow_the_status():
    m = Metrics()
    results = [IterationResult(iteration=1, kind="spin", pairs=6, reward_margin=0.4,
                               reward_accuracy=0.75),
               IterationResult(iteration=2, kind="selfReward", pairs=5, reward_margin=0.1,
                               reward_accuracy=0.6, judge_parse_failures=7,
                               judge_score_counts={"3.0": 4, "5.0": 2}),
               IterationResult(iteration=3, kind="selfReward", pairs=6, reward_model_mean=-0.5,
                               reward_model_std=0.25)]
    m.observe_run("ml", "mix", _status("Running", results))
    assert _value(m, "cream_reward_margin", namespace="ml", run="mix", iteration="1",
                  step="spin") == 0.4
    assert _value(m, "cream_reward_accuracy", namespace="ml", run="mix", iteration="2",
                  step="selfReward") == 0.6
    assert _value(m, "cream_judge_parse_failures", namespace="ml", run="mix",
                  iteration="2") == 7
    assert _value(m, "cream_judge_scores", namespace="ml", run="mix", iteration="2",
                  score="3.0") == 4
    assert _value(m, "cream_reward_model_mean", namespace="ml", run="mix", iteration="3") == -0.5
    assert _value(m, "cream_reward_model_std", namespace="ml", run="mix", iteration="3") == 0.25
    # Iterations not ranked by a reward model have no series of it.
    assert _value(m, "cream_reward_model_std", namespace="ml", run="mix", iteration="2") is None
    # A run without a schedule: its DPO iterations are selfReward ones.
    m.observe_run("ml", "plain", _status("Running", [IterationResult(
        iteration=1, reward_margin=0.2, reward_accuracy=0.5)]))
    assert _value(m, "cream_reward_margin", namespace="ml", run="plain", iteration="1",
                  step="selfReward") == 0.2
    m.forget_run("ml", "mix")
    assert 'run="mix"' not in generate_latest(m.registry).decode()
