"""`python -m cream_stages.cleanup <uri>`: delete a run's artifacts (cleanupPolicy: Delete).

Not a pipeline stage (it leaves no manifest: there is nothing left to commit); the operator runs it
as a Job when a CreamRun whose cleanupPolicy is Delete is deleted.
"""

from __future__ import annotations

import argparse
import sys

from . import artifacts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cream_stages.cleanup",
                                     description="Delete everything under a run's artifact root.")
    parser.add_argument("uri", help="the run's artifact root: s3://bucket/prefix or a directory")
    args = parser.parse_args(argv)
    depth = len([p for p in args.uri.removeprefix("s3://").split("/") if p]) - 1
    if artifacts.is_s3(args.uri) and depth < 3:
        # A run's root is {storage}/{namespace}/{run}/{uid}: anything shallower is not one.
        print(f"error: refusing to delete {args.uri}: not a run's artifact root", file=sys.stderr)
        return 2
    try:
        count = artifacts.delete_prefix(args.uri)
    except artifacts.ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"deleted {count} object(s) under {args.uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
