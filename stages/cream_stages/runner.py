"""`python -m cream_stages <stage> --request <uri>`: the launcher around every stage.

Read and validate the request; if the output's manifest exists the stage is done (exit 0, no
work); else run it, which writes its outputs, then write the manifest last. Bad input (request,
data, model) is one line on stderr and in the Kubernetes termination message, exit 2; anything
unexpected, exit 1 with the traceback in the log. No manifest on failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime

from pydantic import ValidationError

from . import artifacts
from .contract import MANIFEST, STAGES, Manifest, StageInputError, StageResult, parse_request

log = logging.getLogger("cream_stages")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
TERMINATION_LOG_ENV = "CREAM_TERMINATION_LOG"
K8S_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_LIMIT = 4096  # bytes Kubernetes keeps


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def _termination_log_path() -> str | None:
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path:
        return path
    if os.path.exists(K8S_TERMINATION_LOG) and os.access(K8S_TERMINATION_LOG, os.W_OK):
        return K8S_TERMINATION_LOG
    return None


def _write_termination_log(data: bytes) -> None:
    path = _termination_log_path()
    if path:
        try:
            with open(path, "wb") as fh:
                fh.write(data[:TERMINATION_LOG_LIMIT])
        except OSError as exc:
            log.warning("could not write the termination message to %s: %s", path, exc)


def report_failure(message: str) -> None:
    """The one-line reason, on stderr and where Kubernetes shows it as the container's message."""
    line = " ".join(message.split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    _write_termination_log(line.encode("utf-8"))


def report_success(manifest: Manifest) -> None:
    """The manifest's metrics as the termination message: how the operator learns a stage's
    results without reading S3. Written on a no-op rerun too, so a retried Job reports again."""
    body = {"stage": manifest.stage, "metrics": manifest.metrics}
    _write_termination_log(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _validation_message(uri: str, stage: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        parts = list(err["loc"])
        # Drop the envelope's "request" and the union's tag (the stage name) from the location.
        for tag in ("request", stage):
            if parts and parts[0] == tag:
                parts.pop(0)
        loc = ".".join(str(p) for p in parts)
        msg = err["msg"].removeprefix("Value error, ")  # our validators' words stand alone
        problems.append(f"field '{loc}': {msg}" if loc else msg)
    return f"{uri}: invalid request: {'; '.join(problems)}"


def load_request(stage: str, uri: str):
    data = artifacts.read_json(uri)
    if not isinstance(data, dict):
        raise StageInputError(f"{uri}: the request must be a JSON object")
    if data.get("stage", stage) != stage:
        raise StageInputError(f"{uri}: field 'stage' is {data.get('stage')!r} but this is the "
                              f"{stage!r} stage")
    try:
        return parse_request({"stage": stage, **data})
    except ValidationError as exc:
        raise StageInputError(_validation_message(uri, stage, exc)) from exc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_stage(stage: str, request_uri: str) -> int:
    request = load_request(stage, request_uri)
    manifest_uri = artifacts.join(request.output, MANIFEST)
    if artifacts.exists(manifest_uri):
        print(f"{stage}: already done ({manifest_uri} exists); nothing to do", flush=True)
        if rank() == 0:
            try:
                done = Manifest.model_validate(artifacts.read_json(manifest_uri))
            except ValidationError as exc:
                raise artifacts.ArtifactError(f"{manifest_uri}: corrupt manifest: {exc}") from exc
            report_success(done)
        return 0
    started, t0, cpu0 = _now(), time.monotonic(), time.process_time()
    log.info("%s: request %s -> %s", stage, request_uri, request.output)
    module = importlib.import_module(f"cream_stages.{stage}")
    result: StageResult | None = module.run(request)
    if rank() != 0 or result is None:  # only rank 0 of a distributed stage commits
        return 0
    manifest = Manifest(
        stage=stage,
        request=request.model_dump(mode="json"),
        inputs=result.inputs,
        outputs=result.outputs,
        metrics=result.metrics,
        timings={"started": started, "finished": _now(),
                 "seconds": round(time.monotonic() - t0, 3),
                 "cpu_seconds": round(time.process_time() - cpu0, 3)},
    )
    artifacts.write_json(manifest_uri, manifest.model_dump(mode="json"))
    report_success(manifest)
    print(f"{stage}: done -> {manifest_uri}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cream_stages",
                                     description="Run one stage of the CREAM pipeline.")
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--request", required=True, help="URI of the request JSON (path or s3://)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("CREAM_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_stage(args.stage, args.request)
    except (StageInputError, artifacts.ArtifactError) as exc:
        report_failure(f"{args.stage}: {exc}")
        return EXIT_BAD_INPUT
    except Exception as exc:  # the unexpected: keep the traceback for the logs
        log.exception("%s failed", args.stage)
        report_failure(f"{args.stage}: unexpected error: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
