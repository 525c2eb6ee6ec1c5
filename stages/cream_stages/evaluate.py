"""Stage `evaluate`: greedy answers on each task, the answer extracted, accuracy per task.

The user turn is the question (multiple choice: and each choice on its own line as
"<label>. <text>") followed by the step-by-step instruction of eval_tasks.INSTRUCTION; the
choice label (each item's own labels) or the final number (gsm8k) is extracted by answers.py.
"""

from __future__ import annotations

import logging

from .artifacts import join
from .contract import PREDICTIONS_FILE, EvaluateRequest, StageInputError, StageResult
from .eval_tasks import load_task
from .records import PredictionRecord, write

log = logging.getLogger(__name__)


def run(req: EvaluateRequest) -> StageResult:
    from .inference import open_engine  # noqa: PLC0415 - torch only once the request is valid

    tasks = {t.name: load_task(t.name, t.uri, t.format, t.limit) for t in req.tasks}
    for name, items in tasks.items():
        if not items:
            raise StageInputError(f"task {name}: no items")
    flat = [(name, item) for name, items in tasks.items() for item in items]
    log.info("evaluating %d items of %d task(s)", len(flat), len(tasks))
    engine = open_engine(req.backend, req.model, req.precision, req.seed)
    outputs = engine.generate([item.prompt() for _, item in flat],
                              [f"{name}/{item.id}" for name, item in flat], sample=False,
                              max_tokens=req.max_tokens, batch_size=req.batch_size,
                              desc="evaluate")
    rows = []
    for (name, item), out in zip(flat, outputs, strict=True):
        prediction = item.extract(out[0])
        rows.append(PredictionRecord(task=name, id=item.id, prediction=prediction,
                                     answer=item.answer, correct=item.is_correct(prediction),
                                     output=out[0]))
    accuracy = {name: sum(r.correct for r in rows if r.task == name) / len(items)
                for name, items in tasks.items()}
    counts = {name: len(items) for name, items in tasks.items()}
    for name in tasks:
        log.info("%s: accuracy %.3f over %d items", name, accuracy[name], counts[name])
    write(join(req.output, PREDICTIONS_FILE), rows)
    return StageResult(
        inputs={f"task:{t.name}": t.uri for t in req.tasks} | {"model": req.model},
        outputs={"predictions": PREDICTIONS_FILE},
        metrics={"accuracy": accuracy, "counts": counts},
    )
