"""Stage `evaluate`: greedy answers on each task, the answer extracted, accuracy per task.

Our own formats (multiple_choice, gsm8k): the user turn is the question (multiple choice: and
each choice on its own line as "<label>. <text>") followed by the step-by-step instruction of
eval_tasks.INSTRUCTION; the choice label (each item's own labels) or the final number (gsm8k) is
extracted by answers.py. Tasks of format lm_eval run through lm-evaluation-harness on the same
loaded model (lm_harness.py); their figures land in the same metrics.
"""

from __future__ import annotations

import logging

from .artifacts import join, write_json
from .contract import PREDICTIONS_FILE, EvaluateRequest, StageInputError, StageResult
from .eval_tasks import load_task
from .records import PredictionRecord, write

log = logging.getLogger(__name__)

LM_EVAL_FILE = "lm_eval.json"


def run(req: EvaluateRequest) -> StageResult | None:
    from .engine_pool import engines_for  # noqa: PLC0415 - torch only once the request is valid

    ours = [t for t in req.tasks if t.format != "lm_eval"]
    harness = [t for t in req.tasks if t.format == "lm_eval"]
    tasks = {t.name: load_task(t.name, t.uri, t.format, t.limit) for t in ours}
    for name, items in tasks.items():
        if not items:
            raise StageInputError(f"task {name}: no items")
    accuracy: dict[str, float] = {}
    counts: dict[str, int] = {}
    outputs: dict[str, str] = {}
    with engines_for(req) as engines:
        if not engines.leader and not tasks:
            return None  # lm-eval tasks run on node 0 alone
        if tasks:
            rows = _answer(engines, tasks, req)
            if rows is None:  # another node's share: in its shard; node 0 merges and commits
                return None
            for name, items in tasks.items():
                accuracy[name] = sum(r.correct for r in rows if r.task == name) / len(items)
                counts[name] = len(items)
            write(join(req.output, PREDICTIONS_FILE), rows)
            outputs["predictions"] = PREDICTIONS_FILE
        if harness:
            from . import lm_harness  # noqa: PLC0415 - lm-eval only when a task asks for it

            # on engine 0 of node 0 alone: the harness batches and iterates by itself
            results = lm_harness.evaluate(engines.lm_eval_model(req.batch_size), harness,
                                          req.seed)
            for name, res in results.items():
                accuracy[name], counts[name] = res.accuracy, res.items
            write_json(join(req.output, LM_EVAL_FILE),
                       {name: res.results for name, res in results.items()})
            outputs["lm_eval"] = LM_EVAL_FILE

    for t in req.tasks:
        log.info("%s: accuracy %.3f over %d items", t.name, accuracy[t.name], counts[t.name])
    return StageResult(
        inputs={f"task:{t.name}": t.uri for t in req.tasks} | {"model": req.model},
        outputs=outputs,
        metrics={"accuracy": accuracy, "counts": counts, **engines.shard_metrics()},
    )


def _answer(engines, tasks: dict, req: EvaluateRequest) -> list[PredictionRecord] | None:
    """Greedy answers to every item of our own tasks, extracted and marked (None on a node
    other than 0: its answers went to its shard)."""
    flat = [(name, item) for name, items in tasks.items() for item in items]
    log.info("evaluating %d items of %d task(s)", len(flat), len(tasks))
    answers = engines.generate([item.prompt() for _, item in flat],
                               [f"{name}/{item.id}" for name, item in flat], sample=False,
                               max_tokens=req.max_tokens, batch_size=req.batch_size,
                               desc="evaluate")
    if answers is None:
        return None
    rows = []
    for (name, item), out in zip(flat, answers, strict=True):
        prediction = item.extract(out[0])
        rows.append(PredictionRecord(task=name, id=item.id, prediction=prediction,
                                     answer=item.answer, correct=item.is_correct(prediction),
                                     output=out[0]))
    return rows
