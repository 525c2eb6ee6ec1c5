"""Shape rules for the strings of a CreamRun (URIs, the run's name), written once for both sides.

Each rule is a pair of regular expressions in the subset that Python's `re` and RE2 (the API
server's CEL `matches`) read alike: when the value matches `when`, it must match `need` (or must
not, for `forbid`). pydantic runs them in Python (`check`); crd.py turns the same rules into CEL
`x-kubernetes-validations` (`cel`), so `cream validate` and the API server give one verdict.

What a regular expression cannot see (does the file exist, do a gen:// URI's parameters parse) is
left to `cream validate`'s local checks and the stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

from cream_stages.tiny_model import VARIANTS as BUILTIN_MODELS

# Every derived name must fit: the run's name is the value of its Jobs' and Pods' `cream.dev/run`
# label (at most 63 characters), and the head of its Jobs' names, which are the names of the
# headless Services of multi-node training (DNS-1035 labels: a letter first). jobs.job_name
# shortens the head to fit a Job's own limits.
NAME_MAX = 63
NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MESSAGE = (f"name must be at most {NAME_MAX} characters: lowercase letters, digits and '-', "
                "starting with a letter and ending with a letter or digit (it names the run's "
                "Jobs, Services and labels)")

URI_MAX = 2048  # an S3 key is at most 1024 bytes; a bound keeps the CEL rules' cost bounded


@dataclass(frozen=True)
class Rule:
    when: str  # the rule applies to values this matches ("": to every value)
    need: str  # ...which must match this (or must not, when forbid)
    message: str
    forbid: bool = False

    def holds(self, value: str) -> bool:
        if self.when and not re.search(self.when, value):
            return True
        return bool(re.search(self.need, value)) != self.forbid


def _quoted(regex: str) -> str:
    assert "'" not in regex, regex
    return "'" + regex.replace("\\", "\\\\") + "'"


def cel(rules: tuple[Rule, ...]) -> list[dict]:
    """The rules as the CRD's x-kubernetes-validations of a string field."""
    out = []
    for rule in rules:
        need = f"self.matches({_quoted(rule.need)})"
        if rule.forbid:
            need = "!" + need
        if rule.when:
            need = f"!self.matches({_quoted(rule.when)}) || {need}"
        out.append({"rule": need, "message": rule.message})
    return out


def check(rules: tuple[Rule, ...]):
    def validate(value: str) -> str:
        broken = [r.message for r in rules if not r.holds(value)]
        if broken:
            raise ValueError("; ".join(broken))
        return value
    return validate


# --- URIs --------------------------------------------------------------------------------------

_SCHEME = r"^[A-Za-z][A-Za-z0-9+.-]*:"
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"

_COMMON = (
    Rule("", r"^[ \t\n\r]|[ \t\n\r]$", "no leading or trailing whitespace", forbid=True),
)

# S3's bucket naming rules (as AWS and MinIO apply them).
_S3 = (
    Rule(r"^s3:", r"^s3://[^/]", "an S3 URI looks like s3://<bucket>/<key>"),
    Rule(r"^s3://[^/]", r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|$)",
         "an S3 bucket name is 3 to 63 characters: lowercase letters, digits, '.' and '-', "
         "starting and ending with a letter or digit"),
    Rule(r"^s3://[^/]", rf"^s3://{_LABEL}(\.{_LABEL})*(/|$)",
         "an S3 bucket name has no '..', '.-' or '-.'"),
    Rule(r"^s3://", r"^s3://[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(/|$)",
         "an S3 bucket name is not an IP address", forbid=True),
)
_S3_OBJECT = (  # a file, not a prefix
    Rule(r"^s3://[^/]", r"^s3://[^/]+/[^/]", "name an object: s3://<bucket>/<key>"),
)
_HF = (
    Rule(r"^hf:", r"^hf://([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*/?$",
         "a Hugging Face model looks like hf://<org>/<name>"),
)
_DIST = (
    Rule(r"^dist:", r"^dist://[A-Za-z0-9][A-Za-z0-9._-]*/[^/]",
         "a file of an installed Python distribution looks like dist://<distribution>/<path>"),
)
_BUILTIN_MODEL = (
    Rule(r"^builtin:", rf"^builtin://({'|'.join(BUILTIN_MODELS)})/?$",
         "the builtin models are " + ", ".join(f"builtin://{m}" for m in BUILTIN_MODELS)),
)
_BUILTIN_DATA = (
    Rule(r"^builtin:", r"^builtin://data/[^/.][^/]*$",
         "a bundled data file looks like builtin://data/<file>"),
)
_GEN = (
    Rule(r"^gen:", r"^gen://(arithmetic|choice)/?(\?|$)",
         "a generated set looks like gen://<kind>?n=<items>&seed=<int>, kind arithmetic or "
         "choice"),
)
_LM_EVAL = (
    Rule(r"^lm-eval:", r"^lm-eval://[A-Za-z0-9_][A-Za-z0-9_.,-]*$",
         "an lm-evaluation-harness task looks like lm-eval://<task>"),
)


def _schemes(*names: str) -> Rule:
    known = ", ".join(f"{n}://" for n in names)
    alternatives = "|".join(names)  # letters and '-' only: nothing to escape
    return Rule(_SCHEME, rf"^({alternatives}):",
                f"unknown URI scheme: use {known} or a local path (write a local name with "
                "':' in it as ./<name>)")


MODEL_RULES = (*_COMMON, _schemes("s3", "hf", "builtin", "dist"), *_S3, *_HF, *_DIST,
               *_BUILTIN_MODEL)
DATA_RULES = (*_COMMON, _schemes("s3", "builtin", "gen"), *_S3, *_S3_OBJECT, *_BUILTIN_DATA,
              *_GEN)
TASK_RULES = (*_COMMON, _schemes("s3", "builtin", "gen", "lm-eval"), *_S3, *_S3_OBJECT,
              *_BUILTIN_DATA, *_GEN, *_LM_EVAL)
STORAGE_RULES = (*_COMMON, _schemes("s3"), *_S3)


def uri(rules: tuple[Rule, ...], min_length: int = 1):
    """A URI field's type: bounded, checked by `rules` here and (as CEL) by the API server."""
    return Annotated[str, Field(min_length=min_length, max_length=URI_MAX,
                                json_schema_extra={"x-kubernetes-validations": cel(rules)}),
                     AfterValidator(check(rules))]


ModelUri = uri(MODEL_RULES)
DataUri = uri(DATA_RULES)
TaskUri = uri(TASK_RULES)
StorageUri = uri(STORAGE_RULES, min_length=0)
