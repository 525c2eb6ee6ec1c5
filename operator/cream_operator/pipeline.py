"""The plan of a CreamRun: every stage of every iteration, its request, and what it waits for.

Pure: no I/O. The local runner (`cream run`) and the operator both execute this one plan, so a run
means the same thing on a laptop and on a cluster. Models are M0 (base), M1 = SFT(M0), and
M_{t+1} = DPO(M_t) at iteration t = 1..T.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cream_stages import contract as c
from cream_stages.artifacts import join

from .spec import CreamRunSpec, IterationResult


@dataclass(frozen=True)
class Step:
    key: str  # unique and stable within a run: "iter-1/score-m0"
    iteration: int
    stage: str
    model_index: int | None  # score: the k of M_k scored; sft/dpo/evaluate: the model produced/read
    request: c.SftRequest | c.SampleRequest | c.ScoreRequest | c.ConsistencyRequest \
        | c.DpoRequest | c.EvaluateRequest
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


def plan(spec: CreamRunSpec, root: str) -> list[Step]:
    """Every step of the run in execution order; `root` is the run's artifact root URI."""
    steps: list[Step] = []
    tasks = [
        c.EvalTask(name=t.name, uri=t.uri, format=t.format, limit=t.limit, metric=t.metric,
                   fewshot=t.fewshot)
        for t in spec.evaluation.tasks
    ]
    precision = spec.model.precision
    produced_by: dict[int, str] = {}  # model index -> key of the step that writes it

    def evaluate(t: int, k: int, after: str | None) -> None:
        if not tasks:
            return
        steps.append(Step(
            key=f"iter-{t}/evaluate", iteration=t, stage="evaluate", model_index=k,
            request=c.EvaluateRequest(
                output=join(root, f"iter-{t}", "evaluate"), seed=spec.seed,
                model=model_uri(spec, root, k), tasks=tasks,
                max_tokens=spec.evaluation.max_tokens, batch_size=spec.evaluation.batch_size,
                backend=spec.evaluation.backend, precision=precision,
            ),
            after=(after,) if after else (),
        ))

    if spec.model.sft is None:
        steps.append(Step(
            key="iter-0/sft", iteration=0, stage="sft", model_index=1,
            request=c.SftRequest(
                output=model_uri(spec, root, 1), seed=spec.seed, model=spec.model.base,
                data=spec.data.sft, train=_train_params(spec.sft, spec),
            ),
            after=(),
        ))
        produced_by[1] = "iter-0/sft"
    if spec.evaluation.baseline:
        evaluate(0, 1, produced_by.get(1))

    for t in range(1, spec.iterations + 1):
        seed = spec.seed + t
        sample_dir = join(root, f"iter-{t}", "sample")
        responses = join(sample_dir, c.RESPONSES_FILE)
        sample_key = f"iter-{t}/sample"
        steps.append(Step(
            key=sample_key, iteration=t, stage="sample", model_index=t,
            request=c.SampleRequest(
                output=sample_dir, seed=seed, model=model_uri(spec, root, t),
                prompts=prompt_set(spec, t), n=spec.sampling.responses_per_prompt,
                temperature=spec.sampling.temperature, top_p=spec.sampling.top_p,
                max_tokens=spec.sampling.max_tokens, max_prompts=spec.data.max_prompts,
                batch_size=spec.sampling.batch_size, backend=spec.sampling.backend,
                precision=precision,
            ),
            after=tuple(k for k in [produced_by.get(t)] if k),
        ))

        scores: dict[int, str] = {}
        for k in [m for m in (t, t - 1, t - 2) if m >= 0]:
            out = join(root, f"iter-{t}", f"score-m{k}")
            scores[k] = join(out, c.SCORES_FILE)
            steps.append(Step(
                key=f"iter-{t}/score-m{k}", iteration=t, stage="score", model_index=k,
                request=c.ScoreRequest(
                    output=out, seed=seed, model=model_uri(spec, root, k), model_index=k,
                    responses=responses, max_length=spec.model.max_length,
                    batch_size=spec.scoring.batch_size, backend=spec.scoring.backend,
                    precision=precision,
                ),
                after=(sample_key,),
            ))

        consistency_dir = join(root, f"iter-{t}", "consistency")
        consistency_key = f"iter-{t}/consistency"
        steps.append(Step(
            key=consistency_key, iteration=t, stage="consistency", model_index=None,
            request=c.ConsistencyRequest(
                output=consistency_dir, seed=seed, iteration=t, responses=responses,
                current=scores[t], previous=scores[t - 1], previous2=scores.get(t - 2),
                method=spec.consistency.method, strategy=spec.consistency.strategy,
            ),
            after=tuple(f"iter-{t}/score-m{k}" for k in scores),
        ))

        dpo_key = f"iter-{t}/dpo"
        steps.append(Step(
            key=dpo_key, iteration=t, stage="dpo", model_index=t + 1,
            request=c.DpoRequest(
                output=model_uri(spec, root, t + 1), seed=seed, model=model_uri(spec, root, t),
                pairs=join(consistency_dir, c.PAIRS_FILE), beta=spec.dpo.beta,
                train=_train_params(spec.dpo, spec),
            ),
            after=(consistency_key,),
        ))
        produced_by[t + 1] = dpo_key
        evaluate(t, t + 1, dpo_key)
    return steps


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
    for step in steps:
        m = metrics.get(step.key)
        if m is None:
            continue
        row = by_iter.setdefault(step.iteration, {"iteration": step.iteration})
        if step.stage == "consistency":
            row["consistency_rate"] = m.get("consistency_rate")
            row["pairs"] = m.get("pairs")
            row["dropped"] = m.get("dropped")
        elif step.stage == "evaluate":
            row["accuracy"] = dict(m.get("accuracy", {}))
        elif c.STAGE_TABLE[step.stage].trains:
            row["model_uri"] = model_uri(spec, root, step.model_index)
    if 0 in by_iter and spec.model.sft and "model_uri" not in by_iter[0]:
        by_iter[0]["model_uri"] = spec.model.sft
    return [IterationResult(**by_iter[t]) for t in sorted(by_iter)]
