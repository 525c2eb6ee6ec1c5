"""No confused deputy: a CreamRun naming an image, ServiceAccount or Secret the chart does not
allow fails before any Job exists, with the field and the fix in its condition."""

import copy
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from cream_operator import policy
from cream_operator.config import OperatorConfig
from cream_operator.reconcile import decide
from cream_operator.spec import CreamRunSpec
from cream_stages.contract import STAGES

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())["spec"]
NOW = "2026-11-23T10:00:00+00:00"
CONFIG = OperatorConfig(stage_image="registry.example/stages:1", s3_secret="cream-s3",
                        storage_uri="s3://bucket/runs")


def _spec(**sections) -> CreamRunSpec:
    doc = copy.deepcopy(TINY)
    for key, value in sections.items():
        doc.setdefault(key, {}).update(value)
    return CreamRunSpec.model_validate(doc)


def _run(**sections) -> dict:
    return {"metadata": {"name": "tiny", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": _spec(**sections).model_dump(mode="json", by_alias=True, exclude_none=True)}


def test_a_run_naming_nothing_or_the_defaults_is_allowed():
    assert policy.refusals(_spec(), CONFIG) == []
    defaults = _spec(scheduling={"image": "registry.example/stages:1",
                                 "serviceAccountName": "default"},
                     resources={"sample": {"image": "registry.example/stages:1"}},
                     storage={"secretName": "cream-s3"})
    assert policy.refusals(defaults, CONFIG) == []


@pytest.mark.parametrize(("section", "value", "path", "value_name"), [
    ("scheduling", {"image": "evil.example/miner:1"}, "spec.scheduling.image",
     "policy.allowedImages"),
    ("resources", {"dpo": {"image": "evil.example/miner:1"}}, "spec.resources.dpo.image",
     "policy.allowedImages"),
    ("scheduling", {"serviceAccountName": "cluster-admin"},
     "spec.scheduling.serviceAccountName", "policy.allowedServiceAccounts"),
    ("storage", {"secretName": "prod-db-credentials"}, "spec.storage.secretName",
     "policy.allowedSecrets"),
])
def test_each_field_naming_something_not_allowed_is_refused_with_its_path_and_fix(
        section, value, path, value_name):
    [message] = policy.refusals(_spec(**{section: value}), CONFIG)
    assert message.startswith(f"{path}: ") and value_name in message and "leave it empty" in message


def test_the_chart_lists_allow_names_and_prefixes():
    config = OperatorConfig.from_env({
        "CREAM_STAGE_IMAGE": "registry.example/stages:1",
        "CREAM_ALLOWED_IMAGES": "registry.example/team/*, other.example/exact:2",
        "CREAM_ALLOWED_SERVICE_ACCOUNTS": "trainer",
        "CREAM_ALLOWED_SECRETS": "team-s3,",
    })
    assert config.allowed_images == ("registry.example/team/*", "other.example/exact:2")
    assert config.allowed_secrets == ("team-s3",)
    ok = _spec(scheduling={"image": "registry.example/team/vllm:7",
                           "serviceAccountName": "trainer"},
               resources={"score": {"image": "other.example/exact:2"}},
               storage={"secretName": "team-s3"})
    assert policy.refusals(ok, config) == []
    # A prefix is a prefix of the reference, not of a path segment's name; exact means exact.
    bad = _spec(scheduling={"image": "registry.example/teams/x:1"},
                resources={"score": {"image": "other.example/exact:3"}})
    assert [m.split(":")[0] for m in policy.refusals(bad, config)] == [
        "spec.scheduling.image", "spec.resources.score.image"]
    assert policy.allows(("*",), "anything.example/at:all")


def _fields_naming(model: type[BaseModel], prefix: str) -> set[str]:
    """Paths of every field of the spec whose name says it picks an image, account or Secret."""
    out = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        if re.search(r"(^|\.)(image|serviceAccountName|secretName)$", path):
            out.add(path)
        for arg in (info.annotation, *typing.get_args(info.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= _fields_naming(arg, path)
    return out


def test_every_field_that_picks_an_image_account_or_secret_is_checked():
    everything = _spec(
        scheduling={"image": "x:1", "serviceAccountName": "sa"}, storage={"secretName": "s"},
        resources={stage: {"image": "x:1"} for stage in STAGES})
    checked = {m.split(":")[0] for m in policy.refusals(everything, CONFIG)}
    assert checked == _fields_naming(CreamRunSpec, "spec")


def test_the_operator_refuses_before_any_job_and_names_the_field():
    d = decide(_run(scheduling={"serviceAccountName": "cluster-admin"}), [], NOW, CONFIG)
    assert d.create == [] and d.status.phase == "Failed"
    failed = {c.type: c for c in d.status.conditions}["Failed"]
    assert failed.reason == "NotAllowed"
    assert "spec.scheduling.serviceAccountName: cluster-admin is not allowed" in failed.message
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "NotAllowed")]
    # Once said, not said again at every reconcile of the same generation.
    run = _run(scheduling={"serviceAccountName": "cluster-admin"})
    run["status"] = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert decide(run, [], NOW, CONFIG).events == []
    # Allowed by the chart: the run starts.
    allowed = OperatorConfig(**{**CONFIG.__dict__, "allowed_service_accounts": ("trainer",
                                                                               "cluster-admin")})
    assert decide(_run(scheduling={"serviceAccountName": "cluster-admin"}), [], NOW,
                  allowed).create
