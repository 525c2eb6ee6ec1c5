"""Fixtures of the stage tests: one tiny model per session, and running a stage as a process.

The model cache is a session temp dir (CREAM_CACHE_DIR, inherited by the stage subprocesses), so
the tests never depend on, or write to, ~/.cache.
"""

from __future__ import annotations

import os

import pytest
from stage_helpers import TINY


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cream-cache")
    old = os.environ.get("CREAM_CACHE_DIR")
    os.environ["CREAM_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CREAM_CACHE_DIR", None)
    else:
        os.environ["CREAM_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_path(cache_dir) -> str:
    from cream_stages.models import resolve_model_uri

    return resolve_model_uri(TINY)


@pytest.fixture(scope="session")
def tiny(tiny_path):
    """(model, tokenizer) of the tiny model, loaded once; tests must not train it in place."""
    from cream_stages.models import load_model

    model, tokenizer, _ = load_model(tiny_path)
    return model, tokenizer
