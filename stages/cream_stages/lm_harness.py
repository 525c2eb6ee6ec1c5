"""Evaluation through EleutherAI's lm-evaluation-harness (tasks of format `lm_eval`).

A task is either one lm-eval knows by name (`lm-eval://arc_easy`: its stock tasks, which fetch
their data sets from the Hugging Face hub, so a cluster with internet access) or a task YAML of
lm-eval's own format at any URI the project reads (a local path, `builtin://data/...`, `s3://`).
A YAML's `dataset_kwargs.data_files` may name files by URI too (s3://, builtin://data/, or paths
relative to the YAML): they are fetched and rewritten to local paths, so a task defined on the
user's own files runs with no hub access. The model is the one the evaluate stage loaded
(transformers) or lm-eval's vLLM wrapper of the same checkpoint.

The task's accuracy is the lm-eval result its `metric` names (`acc` unless told: lm-eval keys its
results `metric,filter`; a bare metric means filter `none`); every result lm-eval computed is kept
in the stage's lm_eval.json.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import artifacts
from .contract import LM_EVAL_SCHEME, EvalTask, StageInputError
from .data import resolve_data_uri

log = logging.getLogger(__name__)

DEFAULT_METRIC = "acc"


@dataclass(frozen=True)
class HarnessResult:
    accuracy: float
    items: int
    results: dict  # everything lm-eval reported for the task


def result_key(metric: str | None) -> str:
    """lm-eval's results key of a metric: 'acc' -> 'acc,none'; 'exact_match,flexible' as is."""
    metric = metric or DEFAULT_METRIC
    return metric if "," in metric else f"{metric},none"


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def _local_file(uri: str, base: str, workdir: Path) -> str:
    """A data file named in a task YAML, as a local path (s3:// objects are downloaded)."""
    if uri.startswith("builtin://"):
        return resolve_data_uri(uri)
    if not artifacts.is_s3(uri) and not Path(uri).is_absolute() and "://" not in uri:
        uri = artifacts.join(base, uri)  # relative to the YAML
    if artifacts.is_s3(uri):
        target = workdir / "data" / uri.removeprefix("s3://")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(artifacts.read_bytes(uri))
        return str(target)
    if "://" in uri:
        raise StageInputError(f"{uri}: a task's data files must be local, s3:// or builtin://")
    if not Path(uri).is_file():
        raise StageInputError(f"{uri}: no such data file")
    return uri


def _rewrite_data_files(files, base: str, workdir: Path):
    """data_files as datasets takes them (a path, a list, or split -> path or list)."""
    if isinstance(files, str):
        return _local_file(files, base, workdir)
    if isinstance(files, list):
        return [_rewrite_data_files(f, base, workdir) for f in files]
    if isinstance(files, dict):
        return {split: _rewrite_data_files(f, base, workdir) for split, f in files.items()}
    raise StageInputError("dataset_kwargs.data_files must be a path, a list or a mapping")


def materialise_task_yaml(task: EvalTask, workdir: Path) -> str:
    """Write the task's YAML (data files made local) into workdir; return lm-eval's task name."""
    uri = resolve_data_uri(task.uri)
    try:
        doc = yaml.safe_load(artifacts.read_text(uri))
    except yaml.YAMLError as exc:
        raise StageInputError(f"{task.uri}: task {task.name}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
        raise StageInputError(f"{task.uri}: task {task.name}: an lm-eval task YAML needs a "
                              "string field 'task' (the task's name)")
    kwargs = doc.get("dataset_kwargs")
    if isinstance(kwargs, dict) and "data_files" in kwargs:
        kwargs["data_files"] = _rewrite_data_files(kwargs["data_files"], _parent(uri), workdir)
    (workdir / f"{task.name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc["task"]


def _accuracy(task: EvalTask, harness_name: str, report: dict) -> HarnessResult:
    results = report["results"].get(harness_name)
    if results is None:
        raise StageInputError(f"task {task.name}: lm-eval returned no results for "
                              f"{harness_name}")
    key = result_key(task.metric)
    value = results.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        have = sorted(k for k, v in results.items() if "," in k and "_stderr" not in k
                      and isinstance(v, int | float))
        raise StageInputError(f"task {task.name}: field 'metric': lm-eval reported no "
                              f"{key!r} for {harness_name}; it reported {', '.join(have)}")
    items = report.get("n-samples", {}).get(harness_name, {}).get("effective")
    if items is None:
        items = results.get("sample_len", 0)
    return HarnessResult(float(value), int(items), results)


def evaluate(lm, tasks: list[EvalTask], seed: int) -> dict[str, HarnessResult]:
    """Run each lm_eval task on `lm` (an lm-eval LM); results by the task's name in the spec."""
    from lm_eval import simple_evaluate  # noqa: PLC0415 - a heavy import, only when asked
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    out: dict[str, HarnessResult] = {}
    with tempfile.TemporaryDirectory(prefix="cream-lm-eval-") as tmp:
        workdir = Path(tmp)
        local = {t.name: materialise_task_yaml(t, workdir) for t in tasks
                 if not t.uri.startswith(LM_EVAL_SCHEME)}
        by_name = {t.name: t.uri.removeprefix(LM_EVAL_SCHEME) for t in tasks
                   if t.uri.startswith(LM_EVAL_SCHEME)}
        # Indexing lm-eval's stock tasks takes seconds: only when a task names one.
        manager = TaskManager(include_path=str(workdir) if local else None,
                              include_defaults=bool(by_name))
        names = {**local, **by_name}
        for task in tasks:
            harness_name = names[task.name]
            if harness_name not in manager.all_tasks and harness_name not in manager.all_groups:
                raise StageInputError(f"task {task.name}: field 'uri': lm-eval knows no task "
                                      f"{harness_name!r}")
            log.info("lm-eval: %s (%s)", task.name, harness_name)
            report = simple_evaluate(
                model=lm, tasks=[harness_name], task_manager=manager, limit=task.limit,
                num_fewshot=task.fewshot, log_samples=False, bootstrap_iters=0,
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed)
            out[task.name] = _accuracy(task, harness_name, report)
    return out
