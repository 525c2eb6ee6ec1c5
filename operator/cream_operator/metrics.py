"""The operator's Prometheus metrics; the only module that touches prometheus-client.

Per-run series (consistency, accuracy, pairs) are set from the run's status on every reconcile,
so they are right after an operator restart too, and removed when the run goes away.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cream_stages.contract import STAGES

from .spec import CreamRunStatus

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
# Stage runtimes span seconds (consistency) to a day (SFT of an 8B model).
STAGE_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consistency = Gauge(
            "cream_consistency_rate", "Mean consistency rate C of an iteration (0..1)",
            ["namespace", "run", "iteration"], registry=r)
        self.accuracy = Gauge(
            "cream_eval_accuracy", "Accuracy of the model an iteration produced, per task",
            ["namespace", "run", "iteration", "task"], registry=r)
        self.pairs = Gauge(
            "cream_dpo_pairs", "Preference pairs an iteration trained on",
            ["namespace", "run", "iteration"], registry=r)
        # The step kinds' own figures (issue 10): SPIN's and DPO's reward margins and accuracies
        # (TRL's rewards/margins and rewards/accuracies), the judge's parse failures and scores,
        # an external reward model's mean and spread.
        self.reward_margin = Gauge(
            "cream_reward_margin", "Mean reward margin z (chosen minus rejected implicit reward) "
            "over an iteration's DPO training; step: selfReward or spin",
            ["namespace", "run", "iteration", "step"], registry=r)
        self.reward_accuracy = Gauge(
            "cream_reward_accuracy", "Share of an iteration's training pairs with z > 0",
            ["namespace", "run", "iteration", "step"], registry=r)
        self.judge_parse_failures = Gauge(
            "cream_judge_parse_failures", "Judgements an iteration's judge returned no "
            "readable score in (left out, never scored 0)",
            ["namespace", "run", "iteration"], registry=r)
        self.judge_scores = Gauge(
            "cream_judge_scores", "Parsed judgements of an iteration's judge, by score",
            ["namespace", "run", "iteration", "score"], registry=r)
        self.reward_model_mean = Gauge(
            "cream_reward_model_mean", "Mean reward an iteration's external reward model gave "
            "the sampled responses", ["namespace", "run", "iteration"], registry=r)
        self.reward_model_std = Gauge(
            "cream_reward_model_std", "Standard deviation of those rewards (near 0: the reward "
            "model ranks nothing)", ["namespace", "run", "iteration"], registry=r)
        self.stage_duration = Histogram(
            "cream_stage_duration_seconds", "Wall time of a finished stage's Job",
            ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.runs = Gauge("cream_runs", "CreamRuns by phase", ["phase"], registry=r)
        self.failures = Counter(
            "cream_stage_failures", "Stages that failed (after their Job's retries)",
            ["stage"], registry=r)
        self.reconcile = Histogram(
            "cream_reconcile_duration_seconds", "Time of one reconcile of a CreamRun",
            registry=r)
        # Labelled series exist from their first sample on: create every stage's now, so that
        # increase() sees a stage's first failure and the dashboards show zeros, not gaps.
        for stage in STAGES:
            self.failures.labels(stage)
            self.stage_duration.labels(stage)
        self._series: dict[tuple[str, str], set[tuple[Gauge, tuple[str, ...]]]] = {}
        self._phases: dict[tuple[str, str], str] = {}
        self._count_phases()

    def observe_run(self, namespace: str, run: str, status: CreamRunStatus) -> None:
        key = (namespace, run)
        series: set[tuple[Gauge, tuple[str, ...]]] = set()
        for res in status.results:
            it = str(res.iteration)
            if res.consistency_rate is not None:
                series.add((self.consistency, (namespace, run, it)))
                self.consistency.labels(namespace, run, it).set(res.consistency_rate)
            if res.pairs is not None:
                series.add((self.pairs, (namespace, run, it)))
                self.pairs.labels(namespace, run, it).set(res.pairs)
            for task, acc in res.accuracy.items():
                series.add((self.accuracy, (namespace, run, it, task)))
                self.accuracy.labels(namespace, run, it, task).set(acc)
            step = res.kind or "selfReward"
            for gauge, labels, value in (
                    (self.reward_margin, (namespace, run, it, step), res.reward_margin),
                    (self.reward_accuracy, (namespace, run, it, step), res.reward_accuracy),
                    (self.judge_parse_failures, (namespace, run, it), res.judge_parse_failures),
                    (self.reward_model_mean, (namespace, run, it), res.reward_model_mean),
                    (self.reward_model_std, (namespace, run, it), res.reward_model_std),
                    *((self.judge_scores, (namespace, run, it, score), count)
                      for score, count in res.judge_score_counts.items())):
                if value is not None:
                    series.add((gauge, labels))
                    gauge.labels(*labels).set(value)
        for gauge, labels in self._series.get(key, set()) - series:
            gauge.remove(*labels)
        self._series[key] = series
        if status.phase:
            self._phases[key] = status.phase
        self._count_phases()

    def forget_run(self, namespace: str, run: str) -> None:
        for gauge, labels in self._series.pop((namespace, run), set()):
            gauge.remove(*labels)
        self._phases.pop((namespace, run), None)
        self._count_phases()

    def stage_finished(self, stage: str, seconds: float) -> None:
        self.stage_duration.labels(stage).observe(seconds)

    def stage_failed(self, stage: str) -> None:
        self.failures.labels(stage).inc()

    def _count_phases(self) -> None:
        for phase in PHASES:
            self.runs.labels(phase).set(sum(1 for p in self._phases.values() if p == phase))
