"""Reading a CreamRun from a YAML file and reporting every problem with its field path."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from .spec import CreamRun, problems_of


class _KubectlLoader(yaml.SafeLoader):
    """YAML read as kubectl reads it: `1e-6` is a number (PyYAML's YAML 1.1 wants a '.')."""


_KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"), list("-+0123456789."))


class SpecError(ValueError):
    """A CreamRun that cannot work; `problems` lists each as 'field.path: what is wrong'."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


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
        docs = [d for d in yaml.load_all(text, Loader=_KubectlLoader) if d]
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"not valid YAML: {exc}"]) from None
    runs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "CreamRun"]
    if len(runs) != 1:
        raise SpecError(source, [f"expected exactly one document of kind CreamRun, found "
                                 f"{len(runs)}"])
    return parse(runs[0], source)


def input_problems(run: CreamRun) -> list[str]:
    """Inputs that cannot be read from here: local paths and builtin:// URIs that do not exist,
    malformed gen:// URIs and GGUF sources that are not installed. (Their shapes, and a generated
    set's format, are the spec's own checks: spec.py.)

    S3 and hub URIs are left to the stages (checking them needs credentials and a network)."""
    from cream_stages.contract import LM_EVAL_SCHEME, StageInputError  # noqa: PLC0415
    from cream_stages.data import validate_data_uri  # noqa: PLC0415
    from cream_stages.models import validate_model_uri  # noqa: PLC0415

    spec = run.spec
    models = {"spec.model.base": spec.model.base, "spec.model.sft": spec.model.sft}
    models.update({f"spec.schedule[{i}].rewardModel.uri": step.reward_model.uri
                   for i, step in enumerate(spec.schedule or []) if step.reward_model})
    data = {"spec.data.sft": spec.data.sft}
    data.update({f"spec.data.prompts[{i}]": uri for i, uri in enumerate(spec.data.prompts)})
    data.update({f"spec.evaluation.tasks[{i}].uri": t.uri
                 for i, t in enumerate(spec.evaluation.tasks)})
    problems = []
    for field, uri in models.items():
        if uri and not uri.startswith(("s3://", "hf://")):
            try:
                validate_model_uri(uri)
            except StageInputError as exc:
                problems.append(f"{field}: {exc}")
    for field, uri in data.items():
        if not uri or uri.startswith(LM_EVAL_SCHEME):
            continue  # lm-eval resolves its own task names
        try:
            validate_data_uri(uri)
        except StageInputError as exc:
            problems.append(f"{field}: {exc}")
    return problems
