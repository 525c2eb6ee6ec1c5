"""Stage `evaluate`: greedy answers on each task, the answer extracted, accuracy per task.

The user turn is the question (multiple choice: and each choice on its own line as
"<label>. <text>") followed by the step-by-step instruction of eval_tasks.INSTRUCTION; the
choice label (each item's own labels) or the final number (gsm8k) is extracted by answers.py.
"""

from __future__ import annotations

import logging

from . import artifacts
from .contract import PREDICTIONS_FILE, EvaluateRequest
from .errors import StageInputError
from .eval_tasks import load_task
from .runner import StageResult

log = logging.getLogger(__name__)


def run(req: EvaluateRequest) -> StageResult:
    names = [t.name for t in req.tasks]
    if len(set(names)) != len(names):
        raise StageInputError("field 'tasks': task names must be unique")
    tasks = {t.name: load_task(t.name, t.uri, t.format, t.limit) for t in req.tasks}
    for name, items in tasks.items():
        if not items:
            raise StageInputError(f"task {name}: no items")
    flat = [(name, item) for name, items in tasks.items() for item in items]
    prompts = [item.prompt() for _, item in flat]
    log.info("evaluating %d items of %d task(s)", len(flat), len(tasks))
    if req.backend == "vllm":
        from . import vllm_backend  # noqa: PLC0415
        from .models import load_tokenizer, resolve_model_uri  # noqa: PLC0415
        from .tokenization import prompt_text  # noqa: PLC0415

        path = resolve_model_uri(req.model)
        tokenizer = load_tokenizer(path)
        ids = [tokenizer(prompt_text(tokenizer, p), add_special_tokens=False)["input_ids"]
               for p in prompts]
        outputs = vllm_backend.generate(path, ids, [f"{n}/{i.id}" for n, i in flat],
                                        precision=req.precision, seed=req.seed, sample=False,
                                        max_tokens=req.max_tokens)
    else:
        from .generation import generate  # noqa: PLC0415
        from .models import load_model  # noqa: PLC0415

        model, tokenizer, _ = load_model(req.model, req.precision)
        outputs = generate(model, tokenizer, prompts, sample=False, max_tokens=req.max_tokens,
                           batch_size=req.batch_size, seed=req.seed, desc="evaluate")
    rows = []
    for (name, item), out in zip(flat, outputs, strict=True):
        prediction = item.extract(out[0])
        rows.append({"task": name, "id": item.id, "prediction": prediction,
                     "answer": item.answer, "correct": item.is_correct(prediction),
                     "output": out[0]})
    accuracy = {name: sum(r["correct"] for r in rows if r["task"] == name) / len(items)
                for name, items in tasks.items()}
    counts = {name: len(items) for name, items in tasks.items()}
    for name in tasks:
        log.info("%s: accuracy %.3f over %d items", name, accuracy[name], counts[name])
    artifacts.write_jsonl(artifacts.join(req.output, PREDICTIONS_FILE), rows)
    return StageResult(
        inputs={f"task:{t.name}": t.uri for t in req.tasks} | {"model": req.model},
        outputs={"predictions": PREDICTIONS_FILE},
        metrics={"accuracy": accuracy, "counts": counts},
    )
