"""`cream run`: every step of the plan on this machine, each as its own stage process.

The same entrypoint the cluster's Jobs run (`python -m cream_stages <stage> --request <uri>`), so a
local run exercises exactly the stage code a cluster run does. A step whose manifest exists is
done and skipped, which makes a rerun resume where the last one stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from cream_stages import artifacts
from cream_stages.contract import Manifest

from . import pipeline
from .spec import CreamRun, IterationResult


class StageFailed(RuntimeError):
    def __init__(self, step: pipeline.Step, returncode: int):
        self.step = step
        self.returncode = returncode
        super().__init__(f"stage {step.key} failed with exit code {returncode}")


def read_manifest(uri: str) -> Manifest | None:
    """The manifest at `uri`, None when absent; a corrupt one fails loudly."""
    if not artifacts.exists(uri):
        return None
    try:
        return Manifest.model_validate(artifacts.read_json(uri))
    except ValueError as exc:
        raise artifacts.ArtifactError(f"{uri}: not a valid stage manifest: {exc}") from exc


def run_root(run: CreamRun, out: str | None) -> str:
    if out:
        return out
    if run.spec.storage.uri:
        return artifacts.join(run.spec.storage.uri, "local", run.metadata["name"])
    return artifacts.join("runs", run.metadata["name"])


def stage_command(step: pipeline.Step) -> list[str]:
    return [sys.executable, "-m", "cream_stages", step.stage, "--request", step.request_uri]


def execute(
    run: CreamRun,
    root: str,
    log: Callable[[str], None] = print,
) -> tuple[list[IterationResult], int]:
    """Run what is not done yet; returns the results and how many stages actually ran."""
    steps = pipeline.plan(run.spec, root)
    metrics: dict[str, dict] = {}
    ran = 0
    for i, step in enumerate(steps, start=1):
        stop = pipeline.early_stop(run.spec, steps, metrics)
        if stop is not None and step.iteration > stop.iteration:
            log(f"stopped early by {stop.step}: {stop.reason}; iteration {step.iteration} and "
                "later do not run")
            steps = pipeline.until(steps, stop)
            break
        label = f"[{i}/{len(steps)}] {step.key}"
        manifest = read_manifest(step.manifest_uri)
        if manifest is None:
            artifacts.write_json(step.request_uri, step.request.model_dump(mode="json"))
            log(f"{label}: running")
            started = time.monotonic()
            proc = subprocess.run(stage_command(step), check=False)
            if proc.returncode != 0:
                raise StageFailed(step, proc.returncode)
            manifest = read_manifest(step.manifest_uri)
            if manifest is None:
                raise artifacts.ArtifactError(
                    f"{step.manifest_uri}: stage {step.key} exited 0 without its manifest"
                )
            ran += 1
            log(f"{label}: done in {time.monotonic() - started:.1f}s")
        else:
            log(f"{label}: done already, skipped")
        metrics[step.key] = manifest.metrics
    return pipeline.results(steps, metrics, root, run.spec), ran


def results_document(results: list[IterationResult]) -> dict:
    return {"iterations": [r.model_dump(mode="json", exclude_none=True) for r in results]}


def format_table(results: list[IterationResult]) -> str:
    tasks = sorted({name for r in results for name in r.accuracy})
    kinds = any(r.kind for r in results)  # a run with a schedule: say each iteration's step
    header = ["iteration", *(["step"] if kinds else []), "consistency", "pairs", "dropped",
              *tasks]
    rows = [header]
    for r in results:
        rows.append([
            str(r.iteration),
            *([r.kind or "-"] if kinds else []),
            "-" if r.consistency_rate is None else f"{r.consistency_rate:.3f}",
            "-" if r.pairs is None else str(r.pairs),
            "-" if r.dropped is None else str(r.dropped),
            *("-" if t not in r.accuracy else f"{r.accuracy[t]:.3f}" for t in tasks),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
