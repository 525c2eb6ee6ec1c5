"""The `cream` command: run locally, validate a CreamRun, generate a task set, print the CRD, run
the operator."""

from __future__ import annotations

import argparse
import json
import sys

from cream_stages import artifacts

from . import crd, local, specfile, view
from .config import WORKERS


def _load_checked(path: str):
    """The CreamRun in `path`, or None after printing every problem with its field path."""
    try:
        run = specfile.load(path)
        problems = specfile.input_problems(run)
    except specfile.SpecError as exc:
        problems = exc.problems
    if not problems:
        return run
    print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return None


def _validate(args) -> int:
    failed = False
    for path in args.files:
        if _load_checked(path) is None:
            failed = True
        else:
            print(f"{path}: valid")
    return 1 if failed else 0


def _run(args) -> int:
    run = _load_checked(args.file)
    if run is None:
        return 2
    root = local.run_root(run, args.out)
    print(f"cream run {run.metadata['name']}: artifacts in {root}", flush=True)
    try:
        results, ran = local.execute(run, root, log=lambda m: print(m, flush=True))
    except local.StageFailed as exc:
        print(f"error: {exc}; fix the cause and run the same command again to resume",
              file=sys.stderr)
        return 1
    except artifacts.ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    doc = local.results_document(results)
    artifacts.write_json(artifacts.join(root, "results.json"), doc)
    print()
    print(local.format_table(results))
    print(f"\n{ran} stage(s) ran; results in {artifacts.join(root, 'results.json')}")
    return 0


def _generate(args) -> int:
    from cream_stages import generated_tasks  # noqa: PLC0415
    from cream_stages.contract import StageInputError  # noqa: PLC0415

    try:
        records = generated_tasks.generate(args.uri)
    except StageInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        artifacts.write_jsonl(args.out, records)
        print(f"{len(records)} item(s) written to {args.out}", file=sys.stderr)
    else:
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")
    return 0


def _crd(_args) -> int:
    sys.stdout.write(crd.render())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _operator(args) -> int:
    from .startup import run_operator  # noqa: PLC0415 - kopf only when the operator runs

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run every iteration of a CreamRun on this machine")
    p.add_argument("file", help="CreamRun YAML")
    p.add_argument("--out", help="artifact root (default: runs/<name>, or the spec's S3 storage)")
    p.set_defaults(func=_run)

    p = sub.add_parser("validate", help="check CreamRun files; every problem with its field")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_validate)

    p = sub.add_parser("generate", help="write a generated task set (gen://...) as JSONL")
    p.add_argument("uri", help="e.g. 'gen://arithmetic?n=400&seed=1' or "
                   "'gen://choice?n=400&seed=1&options=5&labels=numbers'")
    p.add_argument("--out", "-o", help="file or s3:// URI to write (default: stdout)")
    p.set_defaults(func=_generate)

    view.add_commands(sub)  # get, logs

    p = sub.add_parser("crd", help="print the CreamRun CustomResourceDefinition")
    p.set_defaults(func=_crd)

    p = sub.add_parser("operator", help="run the Kubernetes operator")
    p.add_argument("--namespace", "-n", action="append", default=[],
                   help="watch only these namespaces (repeatable); default: all")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                   help="kopf's health endpoint")
    p.add_argument("--metrics-port", type=int, default=9090)
    p.add_argument("--peering", default=None, help="kopf peering name, for several replicas")
    p.add_argument("--priority", type=int, default=0, help="kopf peering priority")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one JSON object a line, an action's fields as keys")
    p.add_argument("--workers", type=_positive, default=WORKERS,
                   help="handler threads, i.e. API calls in flight (bench/RESULTS.md: "
                        "bench_scale.py measures the trade)")
    p.set_defaults(func=_operator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
