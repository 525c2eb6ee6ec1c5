"""The plan of a CreamRun: every stage of every iteration, its request, and what it waits for.

Pure: no I/O. The local runner (`cream run`) and the operator both execute this one plan, so a run
means the same thing on a laptop and on a cluster. Models are M0 (base), M1 = SFT(M0) (trained, or
model.sft), and each iteration t = 1..T trains the current model M_k into M_{k+1}: without a
schedule k = t (CREAM's M_t); a schedule without SFT starts from M0. Each iterating step kind
plans its iteration through ROUND_PLANNERS, the one table of kinds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cream_stages import contract as c
from cream_stages.artifacts import join
from cream_stages.judge_prompt import DEFAULT_PATTERN, DEFAULT_TEMPLATE

from .spec import DEFAULT_LAMBDA, CreamRunSpec, IterationResult, JudgeSpec, ScheduleStep


@dataclass(frozen=True)
class Step:
    key: str  # unique and stable within a run: "iter-1/score-m0"
    iteration: int
    stage: str
    model_index: int | None  # score: the k of M_k scored; sft/dpo/evaluate: the model produced/read
    request: c.SftRequest | c.SampleRequest | c.ScoreRequest | c.JudgeRequest \
        | c.ConsistencyRequest | c.SpinRequest | c.DpoRequest | c.EvaluateRequest
    after: tuple[str, ...]

    @property
    def output(self) -> str:
        return self.request.output

    @property
    def manifest_uri(self) -> str:
        return join(self.request.output, c.MANIFEST)

    @property
    def request_uri(self) -> str:
        return join(self.request.output, "request.json")


def model_uri(spec: CreamRunSpec, root: str, k: int) -> str:
    if k == 0:
        return spec.model.base
    if k == 1 and spec.model.sft:
        return spec.model.sft
    return join(root, "models", f"M{k}")


def prompt_set(spec: CreamRunSpec, t: int) -> str:
    prompts = spec.data.prompts
    return prompts[0] if len(prompts) == 1 else prompts[t - 1]


def _train_params(train, spec: CreamRunSpec) -> c.TrainParams:
    return c.TrainParams(
        epochs=train.epochs,
        learning_rate=train.learning_rate,
        batch_size=train.batch_size,
        gradient_accumulation=train.gradient_accumulation,
        max_length=spec.model.max_length,
        backend=train.backend,
        zero_stage=train.zero_stage,
        precision=spec.model.precision,
    )


@dataclass
class _Planner:
    """What the round planners share: the run, its artifact root, and the steps so far."""

    spec: CreamRunSpec
    root: str
    steps: list[Step]

    def add(self, step: Step) -> str:
        self.steps.append(step)
        return step.key

    def dpo(self, t: int, k: int, pairs: str, beta: float, after: str) -> str:
        """M_k -> M_{k+1} on a pairs file, reference M_k (its log-probs are in the pairs)."""
        spec = self.spec
        return self.add(Step(
            key=f"iter-{t}/dpo", iteration=t, stage="dpo", model_index=k + 1,
            request=c.DpoRequest(
                output=model_uri(spec, self.root, k + 1), seed=spec.seed + t,
                model=model_uri(spec, self.root, k), pairs=pairs, beta=beta,
                train=_train_params(spec.dpo, spec),
            ),
            after=(after,),
        ))


def _self_reward_round(p: _Planner, t: int, k: int, step: ScheduleStep,
                       after: str | None) -> str:
    """CREAM's iteration with M_k as M_t: sample, score by M_k, M_{k-1} (and M_{k-2}),
    consistency, dpo. The implicit reward needs M_{k-1}: k >= 1 (spec.schedule_problems). With
    reward judge, the judges rank instead (_judge_pairs); with rewardModel, an external reward
    model (_reward_model_pairs)."""
    spec, root = p.spec, p.root
    seed = spec.seed + t
    sample_dir = join(root, f"iter-{t}", "sample")
    responses = join(sample_dir, c.RESPONSES_FILE)
    sample_key = p.add(Step(
        key=f"iter-{t}/sample", iteration=t, stage="sample", model_index=k,
        request=c.SampleRequest(
            output=sample_dir, seed=seed, model=model_uri(spec, root, k),
            prompts=prompt_set(spec, t), n=spec.sampling.responses_per_prompt,
            temperature=spec.sampling.temperature, top_p=spec.sampling.top_p,
            max_tokens=spec.sampling.max_tokens, max_prompts=spec.data.max_prompts,
            batch_size=spec.sampling.batch_size, backend=spec.sampling.backend,
            precision=spec.model.precision,
        ),
        after=(after,) if after else (),
    ))
    if step.judges():
        return _judge_pairs(p, t, k, step, sample_key, responses)
    if step.reward == "rewardModel":
        return _reward_model_pairs(p, t, k, step, sample_key, responses)
    scores: dict[int, str] = {}
    for m in [m for m in (k, k - 1, k - 2) if m >= 0]:
        scores[m] = _score(p, t, m, responses, sample_key)
    consistency_dir = join(root, f"iter-{t}", "consistency")
    consistency_key = p.add(Step(
        key=f"iter-{t}/consistency", iteration=t, stage="consistency", model_index=None,
        request=c.ConsistencyRequest(
            output=consistency_dir, seed=seed, iteration=k, responses=responses,
            current=scores[k], previous=scores[k - 1], previous2=scores.get(k - 2),
            method=spec.consistency.method, strategy=spec.consistency.strategy,
        ),
        after=tuple(f"iter-{t}/score-m{m}" for m in scores),
    ))
    return p.dpo(t, k, join(consistency_dir, c.PAIRS_FILE), spec.dpo.beta, consistency_key)


def _score(p: _Planner, t: int, m: int, responses: str, after: str) -> str:
    """s_{M_m} of every sampled response of iteration t; returns the scores file."""
    spec = p.spec
    out = join(p.root, f"iter-{t}", f"score-m{m}")
    p.add(Step(
        key=f"iter-{t}/score-m{m}", iteration=t, stage="score", model_index=m,
        request=c.ScoreRequest(
            output=out, seed=spec.seed + t, model=model_uri(spec, p.root, m), model_index=m,
            responses=responses, max_length=spec.model.max_length,
            batch_size=spec.scoring.batch_size, backend=spec.scoring.backend,
            precision=spec.model.precision,
        ),
        after=(after,),
    ))
    return join(out, c.SCORES_FILE)


def _judge_pairs(p: _Planner, t: int, k: int, step: ScheduleStep, sample_key: str,
                 responses: str) -> str:
    """SRLM's rewarding: M_k judges its responses (and M_{k-1} too, for judge consistency);
    M_k's log-probs are dpo's reference."""
    spec, root = p.spec, p.root
    judge = step.judge or JudgeSpec()
    current = _score(p, t, k, responses, sample_key)
    files: dict[int, str] = {}
    for m in [k, k - 1] if judge.consistency else [k]:
        out = join(root, f"iter-{t}", f"judge-m{m}")
        files[m] = join(out, c.JUDGEMENTS_FILE)
        p.add(Step(
            key=f"iter-{t}/judge-m{m}", iteration=t, stage="judge", model_index=m,
            request=c.JudgeRequest(
                output=out, seed=spec.seed + t, model=model_uri(spec, root, m), model_index=m,
                responses=responses, template=judge.template or DEFAULT_TEMPLATE,
                pattern=judge.pattern or DEFAULT_PATTERN, judgements=judge.judgements,
                min_score=judge.min_score, max_score=judge.max_score,
                temperature=spec.sampling.temperature, top_p=spec.sampling.top_p,
                max_tokens=judge.max_tokens, batch_size=spec.sampling.batch_size,
                backend=spec.sampling.backend, precision=spec.model.precision,
            ),
            after=(sample_key,),
        ))
    consistency_dir = join(root, f"iter-{t}", "consistency")
    consistency_key = p.add(Step(
        key=f"iter-{t}/consistency", iteration=t, stage="consistency", model_index=None,
        request=c.ConsistencyRequest(
            output=consistency_dir, seed=spec.seed + t, iteration=max(k, 1),
            responses=responses, current=current, reward="judge", judgements=files[k],
            previous_judgements=files.get(k - 1), method=spec.consistency.method,
            strategy=spec.consistency.strategy,
        ),
        after=(f"iter-{t}/score-m{k}", *(f"iter-{t}/judge-m{m}" for m in files)),
    ))
    return p.dpo(t, k, join(consistency_dir, c.PAIRS_FILE), spec.dpo.beta, consistency_key)


def _reward_model_pairs(p: _Planner, t: int, k: int, step: ScheduleStep, sample_key: str,
                        responses: str) -> str:
    """An external reward model ranks M_k's responses (weight 1: a fixed model has no previous
    ranking); M_k's log-probs are dpo's reference."""
    spec, root = p.spec, p.root
    rm = step.reward_model
    current = _score(p, t, k, responses, sample_key)
    out = join(root, f"iter-{t}", "reward")
    reward_key = p.add(Step(
        key=f"iter-{t}/reward", iteration=t, stage="reward", model_index=None,
        request=c.RewardRequest(
            output=out, seed=spec.seed + t, model=rm.uri, model_type=rm.type,
            responses=responses, max_length=spec.model.max_length,
            critique_tokens=rm.critique_tokens, batch_size=spec.scoring.batch_size,
            precision=spec.model.precision,
        ),
        after=(sample_key,),
    ))
    consistency_dir = join(root, f"iter-{t}", "consistency")
    consistency_key = p.add(Step(
        key=f"iter-{t}/consistency", iteration=t, stage="consistency", model_index=None,
        request=c.ConsistencyRequest(
            output=consistency_dir, seed=spec.seed + t, iteration=max(k, 1),
            responses=responses, current=current, reward="rewardModel",
            rewards=join(out, c.REWARDS_FILE), method=spec.consistency.method,
            strategy=spec.consistency.strategy,
        ),
        after=(f"iter-{t}/score-m{k}", reward_key),
    ))
    return p.dpo(t, k, join(consistency_dir, c.PAIRS_FILE), spec.dpo.beta, consistency_key)


def _spin_round(p: _Planner, t: int, k: int, step: ScheduleStep, after: str | None) -> str:
    """SPIN's iteration: M_k answers the SFT prompts (spin), then dpo with beta = lambda."""
    spec, root = p.spec, p.root
    spin_dir = join(root, f"iter-{t}", "spin")
    spin_key = p.add(Step(
        key=f"iter-{t}/spin", iteration=t, stage="spin", model_index=k,
        request=c.SpinRequest(
            output=spin_dir, seed=spec.seed + t, model=model_uri(spec, root, k),
            data=spec.data.sft, max_examples=spec.data.max_prompts,
            temperature=spec.sampling.temperature, top_p=spec.sampling.top_p,
            max_tokens=spec.sampling.max_tokens, max_length=spec.model.max_length,
            batch_size=spec.sampling.batch_size, backend=spec.sampling.backend,
            precision=spec.model.precision,
        ),
        after=(after,) if after else (),
    ))
    lam = step.lambda_ if step.lambda_ is not None else DEFAULT_LAMBDA
    return p.dpo(t, k, join(spin_dir, c.PAIRS_FILE), lam, spin_key)


# The one table of step kinds that iterate: each plans one iteration t from M_k to M_{k+1} and
# returns the key of the step that writes M_{k+1}. A new kind adds a row, nothing else here.
ROUND_PLANNERS = {"selfReward": _self_reward_round, "spin": _spin_round}

# Which of a stage's metrics make its iteration's row of results: row field -> metric.
RESULT_METRICS = {
    "consistency": {"consistency_rate": "consistency_rate", "pairs": "pairs",
                    "dropped": "dropped"},
    "spin": {"pairs": "pairs", "dropped": "dropped"},
    "judge": {"judge_parse_failures": "parse_failures", "judge_score_mean": "score_mean",
              "judge_score_counts": "score_histogram"},
    "reward": {"reward_model_mean": "reward_mean", "reward_model_std": "reward_std"},
    "dpo": {"reward_margin": "reward_margin", "reward_accuracy": "reward_accuracy"},
}


def first_model(spec: CreamRunSpec) -> int:
    """The k of the model iteration 1 starts from: M1 when there is an SFT model (trained or
    given), else M0."""
    return 1 if spec.trains_sft() or spec.model.sft else 0


def plan(spec: CreamRunSpec, root: str) -> list[Step]:
    """Every step of the run in execution order; `root` is the run's artifact root URI."""
    p = _Planner(spec, root, [])
    tasks = [
        c.EvalTask(name=t.name, uri=t.uri, format=t.format, limit=t.limit, metric=t.metric,
                   fewshot=t.fewshot)
        for t in spec.evaluation.tasks
    ]

    def evaluate(t: int, k: int, after: str | None) -> None:
        if not tasks:
            return
        p.add(Step(
            key=f"iter-{t}/evaluate", iteration=t, stage="evaluate", model_index=k,
            request=c.EvaluateRequest(
                output=join(root, f"iter-{t}", "evaluate"), seed=spec.seed,
                model=model_uri(spec, root, k), tasks=tasks,
                max_tokens=spec.evaluation.max_tokens, batch_size=spec.evaluation.batch_size,
                backend=spec.evaluation.backend, precision=spec.model.precision,
            ),
            after=(after,) if after else (),
        ))

    made: str | None = None  # key of the step that writes the current model
    if spec.trains_sft():
        made = p.add(Step(
            key="iter-0/sft", iteration=0, stage="sft", model_index=1,
            request=c.SftRequest(
                output=model_uri(spec, root, 1), seed=spec.seed, model=spec.model.base,
                data=spec.data.sft, train=_train_params(spec.sft, spec),
            ),
            after=(),
        ))
    k = first_model(spec)
    if spec.evaluation.baseline:
        evaluate(0, k, made)

    for t, step in enumerate(spec.rounds(), start=1):
        made = ROUND_PLANNERS[step.kind](p, t, k, step, made)
        k += 1
        evaluate(t, k, made)
    return p.steps


@dataclass(frozen=True)
class EarlyStop:
    iteration: int  # the last iteration that runs
    step: str  # the key of the step whose metric stopped the run
    reason: str


def early_stop(spec: CreamRunSpec, steps: list[Step], metrics: Mapping[str, dict]) \
        -> EarlyStop | None:
    """Whether the run stops early: the metric's values in iteration order (up to the first
    one not known yet), each compared with the best before it; `patience` values in a row not
    above best + minDelta (as Keras' EarlyStopping) stop it after that iteration (at the last
    iteration there is nothing left to stop). Iterations without the metric (a SPIN iteration
    has no consistency rate) neither stop nor reset it."""
    rule = spec.early_stopping
    if rule is None:
        return None
    stage = "consistency" if rule.metric == "consistencyRate" else "evaluate"
    best, misses = None, 0
    for step in (s for s in steps if s.stage == stage):
        if step.key not in metrics:
            return None
        m = metrics[step.key]
        value = m.get("consistency_rate") if stage == "consistency" \
            else (m.get("accuracy") or {}).get(rule.task)
        if value is None:
            continue
        if best is not None and value <= best + rule.min_delta:
            misses += 1
            if misses >= rule.patience and step.iteration < steps[-1].iteration:
                name = "consistency rate" if stage == "consistency" else f"{rule.task} accuracy"
                return EarlyStop(step.iteration, step.key, (
                    f"{name} {value:.4g} at iteration {step.iteration} did not improve on the "
                    f"best {best:.4g} by {rule.min_delta:g} ({misses} time(s) in a row)"))
        else:
            misses = 0
        best = value if best is None else max(best, value)
    return None


def until(steps: list[Step], stop: EarlyStop | None) -> list[Step]:
    """The steps that run: all, or those up to the iteration that stopped the run."""
    return steps if stop is None else [s for s in steps if s.iteration <= stop.iteration]


def runnable(steps: Iterable[Step], done: set[str], running: set[str] = frozenset()) -> list[Step]:
    """Steps that can start now: not done, not running, everything they wait for done."""
    return [
        s for s in steps
        if s.key not in done and s.key not in running and all(a in done for a in s.after)
    ]


def current(steps: list[Step], done: set[str]) -> Step | None:
    """The first step not done yet, in plan order: what status.iteration/stage report."""
    return next((s for s in steps if s.key not in done), None)


def results(steps: list[Step], metrics: Mapping[str, dict], root: str, spec: CreamRunSpec) \
        -> list[IterationResult]:
    """Per-iteration results from the metrics of the finished steps' manifests (key -> metrics)."""
    by_iter: dict[int, dict] = {}
    kinds = {t: step.kind for t, step in enumerate(spec.rounds(), start=1)}
    judge_of: dict[int, int] = {}  # iteration -> the model whose judge made its pairs
    for step in steps:
        if step.stage == "judge":
            judge_of[step.iteration] = max(step.model_index, judge_of.get(step.iteration, 0))
    for step in steps:
        m = metrics.get(step.key)
        if m is None:
            continue
        row = by_iter.setdefault(step.iteration, {"iteration": step.iteration})
        if spec.schedule is not None and step.iteration in kinds:
            row["kind"] = kinds[step.iteration]
        if step.stage == "judge" and step.model_index != judge_of[step.iteration]:
            continue  # the row shows the current model's judge, not the previous model's
        if step.stage in RESULT_METRICS:
            row.update({field: m[name] for field, name in RESULT_METRICS[step.stage].items()
                        if m.get(name) is not None})
        if step.stage == "evaluate":
            row["accuracy"] = dict(m.get("accuracy", {}))
        elif c.STAGE_TABLE[step.stage].trains:
            row["model_uri"] = model_uri(spec, root, step.model_index)
    if 0 in by_iter and spec.model.sft and "model_uri" not in by_iter[0]:
        by_iter[0]["model_uri"] = spec.model.sft
    return [IterationResult(**by_iter[t]) for t in sorted(by_iter)]
