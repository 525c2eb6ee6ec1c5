"""`cream validate` and the API server give one verdict on a CreamRun: generated specs and names,
valid and broken, are each checked by both (`cream validate` on a YAML file; a server-side
dry-run create, unknown fields refused, against the real kube-apiserver with the CRD installed).

Left out by design: local paths and builtin:// files that may not exist (only `cream validate`
can look for them) and gen:// parameters (the stage and `cream validate` parse them)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from cream_operator.cli import main
from cream_operator.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "apiVersion": f"{GROUP}/{VERSION}", "kind": "CreamRun", "metadata": {"name": "run"},
    "spec": {"model": {"base": "hf://org/model"},
             "data": {"sft": "s3://cream-data/sft.jsonl",
                      "prompts": ["s3://cream-data/prompts.jsonl"]}},
}

# URIs that every check can judge without looking for files.
_BUCKETS = st.text("abz09.-_A", min_size=0, max_size=66)
_S3 = st.builds(lambda prefix, bucket, key: f"{prefix}{bucket}{key}",
                st.sampled_from(["s3://", "s3:", "s3:/", "S3://"]), _BUCKETS,
                st.sampled_from(["", "/", "/k.jsonl", "/dir/k.jsonl"]))
_IPS = st.builds(lambda a, b: f"s3://{a}.{b}.0.1/p.jsonl", st.integers(0, 300),
                 st.integers(0, 300))
MODELS = st.one_of(_S3, st.sampled_from([
    "hf://org/model", "hf://gpt2", "hf://", "hf:org/model", "hf://org/model/extra",
    "builtin://tiny-llama", "builtin://big", "gs://bucket/model", "dist://x", " hf://a/b"]))
DATA = st.one_of(_S3, _IPS, st.sampled_from([
    "builtin://data/prompts-1.jsonl", "builtin://data/sft.jsonl", "builtin://data/x/y",
    "gen://arithmetic?n=5&seed=1", "gen://choice?n=5", "gen://essay?n=5", "gen:/choice?n=5",
    "lm-eval://gsm8k", "http://example.com/p.jsonl", ""]))
TASKS = st.fixed_dictionaries(
    {"name": st.sampled_from(["arc", "gsm8k", "Bad.Name"]),
     "uri": st.one_of(DATA, st.sampled_from(["lm-eval://arc_easy", "lm-eval://"])),
     "format": st.sampled_from(["multiple_choice", "gsm8k", "lm_eval"])})
NAMES = st.one_of(st.text("abc09-.", min_size=1, max_size=70),
                  st.sampled_from(["a" * 63, "a" * 64, "my.run", "1run", "run-", "Run"]))
# Integers, numbers and booleans, also written as strings or as the wrong type.
INTS = st.one_of(st.integers(-1, 30), st.sampled_from(["2", 2.0, 2.5, True]))
FLOATS = st.one_of(st.floats(-0.5, 1.5, allow_nan=False), st.integers(0, 2),
                   st.sampled_from(["0.5", True]))
BOOLS = st.sampled_from([True, False, "true", 1])
# Schedule steps, each kind with any of the fields (most apply to one kind only).
STEPS = st.fixed_dictionaries(
    {"kind": st.sampled_from(["sft", "spin", "selfReward", "dance"])},
    optional={"iterations": INTS, "lambda": FLOATS,
              "reward": st.sampled_from(["implicit", "judge", "rewardModel", "model"]),
              # URIs both sides can judge without reading them: builtin ones exist everywhere.
              "rewardModel": st.fixed_dictionaries({}, optional={
                  "uri": st.sampled_from(["builtin://tiny-reward", "hf://org/rm", "s3:/rm", ""]),
                  "type": st.sampled_from(["classic", "cloud", "scalar"]),
                  "critiqueTokens": INTS}),
              "judge": st.fixed_dictionaries({}, optional={
                  "template": st.sampled_from(["{prompt} {response}", "{prompt}", "x"]),
                  "pattern": st.sampled_from([r"Score: (\d+)", r"Score: \d+", r"(?:a)(b)",
                                              r"(?P<n>\d)", r"\(\d\)", r"(?:\d)"]),
                  "minScore": FLOATS, "maxScore": FLOATS, "judgements": INTS,
                  "consistency": BOOLS})})


def _set(path: str, value):
    def apply(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return apply


# Each change is one field given a drawn value, valid or not.
CHANGES = [
    st.builds(lambda v: _set("metadata.name", v), NAMES),
    st.builds(lambda v: _set("spec.model.base", v), MODELS),
    st.builds(lambda v: _set("spec.model.sft", v), MODELS),
    st.builds(lambda v: _set("spec.data.sft", v), DATA),
    st.builds(lambda v: _set("spec.data.prompts", v), st.lists(DATA, min_size=1, max_size=3)),
    st.builds(lambda v: _set("spec.iterations", v), INTS),
    st.builds(lambda v: _set("spec.schedule", v), st.lists(STEPS, max_size=4)),
    st.builds(lambda v: _set("spec.schedule", v), st.lists(st.sampled_from(
        [{"kind": "sft"}, {"kind": "spin", "iterations": 9}, {"kind": "selfReward"}]),
        min_size=1, max_size=4)),
    st.builds(lambda v: _set("spec.resources.spin.nodes", v), INTS),
    st.builds(lambda v: _set("spec.earlyStopping", v), st.fixed_dictionaries(
        {"metric": st.sampled_from(["consistencyRate", "accuracy", "loss"])},
        optional={"task": st.sampled_from(["arc", "gsm8k", "mmlu"]), "minDelta": FLOATS,
                  "patience": INTS})),
    st.builds(lambda v: _set("spec.dpo.beta", v), FLOATS),
    st.builds(lambda v: _set("spec.dpo.epochs", v), INTS),
    st.builds(lambda v: _set("spec.suspend", v), BOOLS),
    st.builds(lambda v: _set("spec.evaluation.tasks", v), st.lists(TASKS, max_size=3)),
    st.builds(lambda v: _set("spec.storage.uri", v),
              st.one_of(_S3, st.sampled_from(["", "runs", "hf://a/b"]))),
    st.just(_set("spec.sampling.tempreature", 1.0)),  # unknown fields are errors on both sides
]


@st.composite
def creamruns(draw) -> dict:
    """A valid CreamRun with one to three fields changed: each verdict turns on few fields."""
    doc = copy.deepcopy(BASE)
    for change in draw(st.lists(st.one_of(CHANGES), min_size=1, max_size=3)):
        change(doc)
    return doc


@pytest.fixture(scope="module")
def crd(kubectl):
    kubectl("apply", "--server-side", "--force-conflicts", "-f",
            str(ROOT / "crds" / "cream.dev_creamruns.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")


def api_server_accepts(api: client.CustomObjectsApi, namespace: str, doc: dict) -> tuple[bool, str]:
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc,
                                            dry_run="All", field_validation="Strict")
    except client.ApiException as exc:
        assert exc.status in (400, 422), exc  # refused as invalid, not a server fault
        return False, exc.body
    return True, ""


def cream_validate_accepts(tmp_path: Path, doc: dict, capsys) -> tuple[bool, str]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = main(["validate", str(path)])
    return code == 0, capsys.readouterr().err


def test_cream_validate_and_the_api_server_agree(crd, k8s_api, namespace, tmp_path_factory,
                                                 capsys):
    api = client.CustomObjectsApi(k8s_api)
    tmp = tmp_path_factory.mktemp("agree")

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(doc=creamruns())
    def agree(doc):
        server, why_server = api_server_accepts(api, namespace, doc)
        local, why_local = cream_validate_accepts(tmp, doc, capsys)
        assert server == local, (f"API server {'accepts' if server else 'refuses'}, cream "
                                 f"validate {'accepts' if local else 'refuses'}:\n"
                                 f"{yaml.safe_dump(doc)}\nserver: {why_server}\n"
                                 f"cream validate: {why_local}")

    agree()


# The schedule rules, one document each, with the field path the API server names.
SCHEDULES = [
    ([{"kind": "spin"}, {"kind": "sft"}], {}, "spec.schedule", "sft step can only be the first"),
    ([{"kind": "sft"}, {"kind": "spin"}], {"spec.model.sft": "hf://org/m1"}, "spec.schedule",
     "model.sft is already M1"),
    ([{"kind": "spin"}], {"spec.model.sft": "hf://org/m1", "spec.data.sft": None},
     "spec.schedule", "need data.sft"),
    ([{"kind": "selfReward"}], {}, "spec.schedule", "there is none"),
    ([{"kind": "sft"}, {"kind": "spin", "iterations": 11}, {"kind": "selfReward",
                                                            "iterations": 10}], {},
     "spec.schedule", "at most 20 iterations"),
    ([{"kind": "sft", "iterations": 2}], {}, "spec.schedule[0].iterations", "iterations applies"),
    ([{"kind": "sft"}, {"kind": "selfReward", "lambda": 0.1}], {}, "spec.schedule[1].lambda",
     "lambda applies"),
    ([{"kind": "sft"}, {"kind": "spin", "reward": "implicit"}], {}, "spec.schedule[1].reward",
     "reward applies"),
    ([{"kind": "sft"}, {"kind": "selfReward", "reward": "judge",
                        "judge": {"template": "Rate {prompt}"}}], {},
     "spec.schedule[1].judge.template", "{response}"),
    ([{"kind": "sft"}, {"kind": "selfReward", "reward": "judge",
                        "judge": {"pattern": "Score: [0-9]+"}}], {},
     "spec.schedule[1].judge.pattern", "group capturing"),
    ([{"kind": "sft"}, {"kind": "selfReward", "reward": "judge",
                        "judge": {"minScore": 5, "maxScore": 1}}], {},
     "spec.schedule[1].judge.minScore", "not be above maxScore"),
    ([{"kind": "sft"}, {"kind": "selfReward", "judge": {}}], {}, "spec.schedule[1].judge",
     "need reward: judge"),
    ([{"kind": "selfReward", "reward": "judge", "judge": {"consistency": True}}], {},
     "spec.schedule", "judge consistency"),
    ([{"kind": "sft"}, {"kind": "selfReward", "reward": "rewardModel"}], {},
     "spec.schedule[1].rewardModel", "needs rewardModel"),
    ([{"kind": "sft"}, {"kind": "selfReward",
                        "rewardModel": {"uri": "hf://org/rm", "type": "classic"}}], {},
     "spec.schedule[1].rewardModel", "needs reward: rewardModel"),
    ([{"kind": "sft"}, {"kind": "spin",
                        "rewardModel": {"uri": "hf://org/rm", "type": "classic"}}], {},
     "spec.schedule[1].rewardModel", "rewardModel applies"),
]


@pytest.mark.parametrize(("schedule", "changes", "path", "words"), SCHEDULES)
def test_impossible_schedules_are_refused_by_both_with_the_field_path(
        crd, k8s_api, namespace, tmp_path, capsys, schedule, changes, path, words):
    doc = copy.deepcopy(BASE)
    doc["spec"]["schedule"] = schedule
    for field, value in changes.items():
        *parents, last = field.split(".")
        node = doc
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    server, why_server = api_server_accepts(client.CustomObjectsApi(k8s_api), namespace, doc)
    local, why_local = cream_validate_accepts(tmp_path, doc, capsys)
    assert not server and not local, (why_server, why_local)
    assert f"{path}: " in why_server and words in why_server, why_server
    # cream validate names the step, and the field where it is the field's own problem.
    assert path.split("[")[0] in why_local and words.split()[0] in why_local, why_local


def test_a_mixed_schedule_is_accepted_by_both(crd, k8s_api, namespace, tmp_path, capsys):
    doc = copy.deepcopy(BASE)
    doc["spec"]["schedule"] = [{"kind": "sft"}, {"kind": "spin", "iterations": 2, "lambda": 0.5},
                               {"kind": "selfReward", "iterations": 2, "reward": "implicit"}]
    server, why_server = api_server_accepts(client.CustomObjectsApi(k8s_api), namespace, doc)
    local, why_local = cream_validate_accepts(tmp_path, doc, capsys)
    assert server and local, (why_server, why_local)
