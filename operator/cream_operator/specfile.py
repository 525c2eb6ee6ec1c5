"""Reading a CreamRun from a YAML file and reporting every problem with its field path."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from .spec import CreamRun


class SpecError(ValueError):
    """A CreamRun that cannot work; `problems` lists each as 'field.path: what is wrong'."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(object)"


def problems_of(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        # Drop pydantic's "Value error, " prefix: the message is already ours.
        msg = err["msg"].removeprefix("Value error, ")
        loc = field_path(err["loc"])
        if err["type"] not in ("value_error", "missing", "extra_forbidden") and "input" in err \
                and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against `cream crd` or the README"
        problems.append(f"{loc}: {msg}")
    return problems


def parse(doc: dict, source: str = "<object>") -> CreamRun:
    try:
        return CreamRun.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(source, problems_of(exc)) from None


def load(path: str | Path) -> CreamRun:
    """The one CreamRun in a YAML file (other kinds in a multi-document file are ignored)."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(source, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"not valid YAML: {exc}"]) from None
    runs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "CreamRun"]
    if len(runs) != 1:
        raise SpecError(source, [f"expected exactly one document of kind CreamRun, found "
                                 f"{len(runs)}"])
    return parse(runs[0], source)
