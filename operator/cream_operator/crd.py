"""Generate the CreamRun CustomResourceDefinition from the pydantic models in spec.py.

Kubernetes wants a structural OpenAPI v3 schema: no $ref, no anyOf over types, `nullable` instead
of a null type, boolean `exclusiveMinimum`. This module turns pydantic's JSON Schema into that, so
the CRD never drifts from the models the operator and `cream validate` use.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from cream_operator import shapes
from cream_operator import spec as s

# Cross-field rules the API server enforces with CEL, mirroring CreamRunSpec._cross_field.
# The iterations of the whole run: `iterations`, or the sum over the schedule (CreamRunSpec.rounds).
ROUNDS = ("(has(self.schedule) ? self.schedule.map(s, s.kind == 'sft' ? 0 : "
          "(has(s.iterations) ? s.iterations : 1)).sum() : self.iterations)")

# Cross-field rules the API server enforces with CEL, mirroring CreamRunSpec._cross_field and
# spec.schedule_problems.
SPEC_RULES = [
    {
        "rule": "has(self.schedule) || has(self.model.sft) || has(self.data.sft)",
        "message": "data.sft is required to train M1 from model.base; or set model.sft to an "
        "already fine-tuned model",
    },
    {
        "rule": f"size(self.data.prompts) == 1 || size(self.data.prompts) >= {ROUNDS}",
        "message": "data.prompts: give one prompt set (reused every iteration) or at least one "
        "per iteration",
    },
    {
        "rule": "!has(self.schedule) || !self.schedule.exists(s, s.kind == 'sft') || "
                "(self.schedule[0].kind == 'sft' && "
                "self.schedule.filter(s, s.kind == 'sft').size() == 1)",
        "message": "schedule: an sft step can only be the first step, once (it makes M1 from "
        "M0)",
        "fieldPath": ".schedule",
    },
    {
        "rule": "!has(self.schedule) || !has(self.model.sft) || "
                "!self.schedule.exists(s, s.kind == 'sft')",
        "message": "schedule: model.sft is already M1; remove the sft step or model.sft",
        "fieldPath": ".schedule",
    },
    {
        "rule": "!has(self.schedule) || has(self.data.sft) || "
                "!self.schedule.exists(s, s.kind in ['sft', 'spin'])",
        "message": "schedule: sft and spin steps need data.sft (examples, reference answers)",
        "fieldPath": ".schedule",
    },
    {
        "rule": "!has(self.schedule) || has(self.model.sft) || "
                "self.schedule[0].kind != 'selfReward' || "
                "(has(self.schedule[0].reward) && "
                "self.schedule[0].reward in ['judge', 'rewardModel'])",
        "message": "schedule[0]: the implicit reward of a first selfReward step compares M0 with "
        "a previous model, and there is none: start with an sft step or set model.sft",
        "fieldPath": ".schedule",
    },
    {
        "rule": "!has(self.schedule) || has(self.model.sft) || "
                "!has(self.schedule[0].judge) || !has(self.schedule[0].judge.consistency) || "
                "!self.schedule[0].judge.consistency",
        "message": "schedule[0]: judge consistency compares M0's judge rankings with a previous "
        "model's, and there is none: start with an sft step, set model.sft, or leave "
        "judge.consistency false",
        "fieldPath": ".schedule",
    },
    {
        "rule": "!has(self.earlyStopping) || !has(self.earlyStopping.task) || "
                "(has(self.evaluation) && has(self.evaluation.tasks) && "
                "self.evaluation.tasks.exists(t, t.name == self.earlyStopping.task))",
        "message": "earlyStopping.task is not one of evaluation.tasks",
        "fieldPath": ".earlyStopping.task",
    },
    {
        "rule": f"!has(self.schedule) || {ROUNDS} <= {s.MAX_ROUNDS}",
        "message": f"schedule: at most {s.MAX_ROUNDS} iterations in all",
        "fieldPath": ".schedule",
    },
]

SPEC_RULES += [
    {
        "rule": f"!has(self.resources) || !has(self.resources.{stage}) || "
                f"!has(self.resources.{stage}.tensorParallel) || "
                f"self.resources.{stage}.tensorParallel == 1 || !has(self.{section}) || "
                f"!has(self.{section}.backend) || self.{section}.backend == 'vllm'",
        "message": f"resources.{stage}.tensorParallel > 1 needs {section}.backend vllm: the "
        "transformers backend runs a model on one device",
    }
    for stage, section in s.TENSOR_PARALLEL_BACKENDS.items()
]

# Fields a running CreamRun cannot change: its artifacts and models would stop matching them.
IMMUTABLE = ("model", "storage")

# Priority 1 columns show with `kubectl get -o wide`.
PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {"name": "Consistency", "type": "number", "jsonPath": ".status.consistencyRate"},
    {"name": "Accuracy", "type": "number", "jsonPath": ".status.accuracy", "priority": 1,
     "description": "Mean accuracy over the tasks of the latest evaluated model"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.base", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_KEEP = {
    "type", "description", "default", "enum", "minimum", "maximum", "pattern", "minLength",
    "maxLength", "minItems", "maxItems", "items", "properties", "required",
    "additionalProperties", "format",
    # What a model or field declares in its json_schema_extra: CEL rules, list-map keys.
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}


def _structural(node: Any, defs: dict) -> Any:
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf with several types structurally: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        out = _structural({**options[0], **rest}, defs)
        if nullable:
            out["nullable"] = True
        return out
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {k: _structural(v, defs) for k, v in value.items()}
        elif key == "additionalProperties" and isinstance(value, bool):
            continue  # structural schemas forbid it; the API server prunes unknown fields
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key in _KEEP:
            out[key] = copy.deepcopy(value)
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    if out.get("default", 0) is None:
        del out["default"]
    if out.get("type") == "object" and "properties" in out:
        # Optional nested objects default to {} so the API server fills in their own defaults
        # (an object with required fields has none to give).
        for prop in out["properties"].values():
            if prop.get("type") == "object" and "properties" in prop and "default" not in prop \
                    and not prop.get("nullable") and not prop.get("required"):
                prop["default"] = {}
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def openapi_schema(model: type) -> dict:
    raw = model.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def crd() -> dict:
    spec_schema = openapi_schema(s.CreamRunSpec)
    spec_schema["x-kubernetes-validations"] = SPEC_RULES
    for field in IMMUTABLE:
        spec_schema["properties"][field]["x-kubernetes-validations"] = [{
            "rule": "self == oldSelf",
            "message": f"spec.{field} is immutable: the run's artifacts were made with it; "
            "create a new CreamRun instead",
        }]
    status_schema = openapi_schema(s.CreamRunStatus)
    conditions = status_schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{s.PLURAL}.{s.GROUP}"},
        "spec": {
            "group": s.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": s.KIND,
                "plural": s.PLURAL,
                "singular": s.SINGULAR,
                "shortNames": s.SHORT_NAMES,
                "listKind": f"{s.KIND}List",
            },
            "versions": [
                {
                    "name": s.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A CREAM self-rewarding training run.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                # The only part of metadata a CRD may restrict: the name, which
                                # names the run's Jobs, Services and labels (shapes.NAME_MAX).
                                "metadata": {"type": "object", "properties": {"name": {
                                    "type": "string", "maxLength": shapes.NAME_MAX,
                                    "pattern": shapes.NAME}}},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated from operator/cream_operator/spec.py by `cream crd`; do not edit.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)
