"""The CRD in crds/ is generated from the spec models and must not drift from them."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from cream_operator import crd

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "cream.dev_creamruns.yaml"


def test_committed_crd_matches_the_models():
    assert CRD_FILE.read_text() == crd.render(), (
        "crds/ drifted from operator/cream_operator/spec.py: run `make crds` and commit"
    )


def _walk(node, path="schema"):
    yield path, node
    for key in ("properties",):
        for name, child in node.get(key, {}).items():
            yield from _walk(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}[{key}]")


def test_schema_is_structural():
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node, f"{path} has no type"
        assert not isinstance(node.get("additionalProperties"), bool), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_schema_has_defaults_enums_and_bounds():
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    sampling = spec["properties"]["sampling"]
    assert sampling["default"] == {}
    assert sampling["properties"]["responsesPerPrompt"]["default"] == 5
    assert sampling["properties"]["responsesPerPrompt"]["minimum"] == 2
    assert sampling["properties"]["topP"]["maximum"] == 1
    assert spec["properties"]["consistency"]["properties"]["strategy"]["enum"] == \
        ["avg", "dynamic", "none"]
    assert spec["properties"]["dpo"]["properties"]["beta"]["default"] == 0.1
    assert [r["rule"] for r in spec["x-kubernetes-validations"]]


def test_printer_columns_read_status_fields():
    cols = {c["name"]: c["jsonPath"] for c in crd.PRINTER_COLUMNS}
    assert cols == {"Phase": ".status.phase", "Iteration": ".status.iteration",
                    "Stage": ".status.stage", "Consistency": ".status.consistencyRate",
                    "Accuracy": ".status.accuracy", "Model": ".spec.model.base",
                    "Message": ".status.message", "Age": ".metadata.creationTimestamp"}
    wide = {c["name"] for c in crd.PRINTER_COLUMNS if c.get("priority") == 1}
    assert wide == {"Accuracy", "Model", "Message"}, "-o wide adds these; the default shows five"


def _undescribed(node, path):
    """Paths of properties without a description (what `kubectl explain` would show blank)."""
    if not node.get("description"):
        yield path
    for name, child in node.get("properties", {}).items():
        yield from _undescribed(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        child = node.get(key)
        if isinstance(child, dict) and "properties" in child:  # objects in lists and maps
            yield from _undescribed(child, f"{path}[]")


def test_every_spec_and_status_field_is_described():
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [p for part in ("spec", "status")
               for p in _undescribed(schema["properties"][part], part)]
    assert missing == [], "describe these fields in operator/cream_operator/spec.py"


def test_the_description_check_sees_a_missing_one():
    node = {"description": "x", "properties": {"a": {"description": "y"}, "b": {},
                                               "c": {"items": {"properties": {"d": {}}},
                                                     "description": "z"}}}
    assert list(_undescribed(node, "n")) == ["n.b", "n.c[]", "n.c[].d"]


def _as_jsonschema(node):
    """OpenAPI's nullable is JSON Schema's null type; enough to check the examples offline."""
    if not isinstance(node, dict):
        return node
    out = {k: _as_jsonschema(v) if k in ("items", "additionalProperties") else v
           for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if "properties" in node:
        out["properties"] = {k: _as_jsonschema(v) for k, v in node["properties"].items()}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
    return out


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_examples_satisfy_the_crd_schema(example):
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    jsonschema.validate(doc["spec"], _as_jsonschema(schema))


YAML11_BOOLEANS = {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON",
                   "off", "Off", "OFF", "true", "True", "TRUE", "false", "False", "FALSE"}


def test_no_field_name_is_a_yaml_1_1_boolean():
    """kubectl reads YAML 1.1: a field named `n` or `on` would arrive as the key "false"/"true"."""
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    names = {path.rsplit(".", 1)[-1] for path, _ in _walk(schema)}
    assert not names & YAML11_BOOLEANS, names & YAML11_BOOLEANS
