"""The CreamRun spec: defaults, bounds, and problems reported with their field paths."""

import copy
from pathlib import Path

import pytest
import yaml

from cream_operator import specfile
from cream_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())


def test_examples_are_valid():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        run = specfile.load(path)
        assert run.spec.iterations >= 1, path


def test_defaults_are_the_papers():
    doc = {"apiVersion": "cream.dev/v1alpha1", "kind": "CreamRun", "metadata": {"name": "x"},
           "spec": {"model": {"base": "hf://a/b"}, "data": {"sft": "s3://bkt/sft.jsonl",
                                                              "prompts": ["s3://bkt/p.jsonl"]}}}
    spec = specfile.parse(doc).spec
    assert (spec.sampling.responses_per_prompt, spec.sampling.temperature, spec.sampling.top_p,
            spec.sampling.max_tokens) == (5, 0.8, 0.95, 768)
    assert (spec.sft.epochs, spec.sft.learning_rate, spec.sft.batch_size) == (5, 5e-6, 4)
    assert (spec.dpo.epochs, spec.dpo.learning_rate, spec.dpo.batch_size, spec.dpo.beta) == \
        (1, 1e-6, 4, 0.1)
    assert spec.consistency.method == "kendall"


def _problems(doc) -> list[str]:
    with pytest.raises(specfile.SpecError) as info:
        specfile.parse(doc)
    return info.value.problems


def test_every_problem_is_reported_with_its_field_path():
    doc = copy.deepcopy(TINY)
    doc["metadata"]["name"] = "Not_A_Label"
    doc["spec"]["sampling"]["topP"] = 1.5
    doc["spec"]["sampling"]["tempreature"] = 1.0
    doc["spec"]["consistency"]["strategy"] = "median"
    doc["spec"]["evaluation"]["tasks"][0]["format"] = "essay"
    problems = _problems(doc)
    assert len(problems) == 5, problems
    joined = "\n".join(problems)
    for path in ("metadata:", "spec.sampling.topP:", "spec.sampling.tempreature: unknown field",
                 "spec.consistency.strategy:", "spec.evaluation.tasks[0].format:"):
        assert path in joined, joined


def test_cross_field_rules_name_the_fix():
    doc = copy.deepcopy(TINY)
    del doc["spec"]["data"]["sft"]
    assert any("data.sft is required" in p and "model.sft" in p for p in _problems(doc))

    doc = copy.deepcopy(TINY)
    doc["spec"]["iterations"] = 3  # two prompt sets for three iterations
    assert any("data.prompts" in p for p in _problems(doc))

    doc = copy.deepcopy(TINY)
    doc["spec"]["evaluation"]["tasks"].append(doc["spec"]["evaluation"]["tasks"][0])
    assert any("repeated: arc_easy" in p for p in _problems(doc))


def test_tensor_parallel_must_divide_gpus_and_needs_vllm():
    big = yaml.safe_load((ROOT / "examples/llama3-8b.yaml").read_text())  # vllm, 8 GPUs
    doc = copy.deepcopy(big)
    doc["spec"]["resources"]["sample"]["tensorParallel"] = 4
    assert specfile.parse(doc).spec.resources.sample.tensor_parallel == 4
    assert specfile.parse(big).spec.resources.score.tensor_parallel == 1  # the default

    doc["spec"]["resources"]["score"]["tensorParallel"] = 3
    doc["spec"]["resources"]["evaluate"] = {"tensorParallel": 2}  # gpus: the operator's default
    problems = "\n".join(_problems(doc))
    assert "spec.resources.score.tensorParallel: must divide gpus (8)" in problems, problems
    assert "spec.resources.evaluate.tensorParallel: must divide gpus (unset)" in problems

    doc = copy.deepcopy(big)
    doc["spec"]["resources"]["dpo"]["tensorParallel"] = 2
    assert any(p.startswith("spec.resources:") and "dpo.tensorParallel is 2" in p
               for p in _problems(doc))

    doc = copy.deepcopy(TINY)  # the transformers backend everywhere
    doc["spec"]["resources"]["sample"] = {"gpus": 2, "tensorParallel": 2}
    assert any("resources.sample.tensorParallel is 2, which needs sampling.backend vllm" in p
               for p in _problems(doc))


def test_cream_validate_exits_nonzero_and_lists_problems(tmp_path, capsys):
    doc = copy.deepcopy(TINY)
    doc["spec"]["sampling"]["responsesPerPrompt"] = 1
    doc["spec"]["iterations"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "spec.sampling.responsesPerPrompt:" in err and "spec.iterations:" in err

    assert main(["validate", str(ROOT / "examples/tiny.yaml")]) == 0


def test_unreadable_and_non_creamrun_files(tmp_path):
    with pytest.raises(specfile.SpecError, match="cannot read"):
        specfile.load(tmp_path / "missing.yaml")
    other = tmp_path / "cm.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(specfile.SpecError, match="exactly one document of kind CreamRun"):
        specfile.load(other)


def test_validate_names_inputs_that_do_not_exist(tmp_path, capsys):
    doc = copy.deepcopy(TINY)
    doc["spec"]["model"]["base"] = str(tmp_path / "no-model")
    doc["spec"]["data"]["prompts"][1] = "builtin://data/nope.jsonl"
    doc["spec"]["evaluation"]["tasks"][0]["uri"] = str(tmp_path / "arc.jsonl")
    doc["spec"]["data"]["sft"] = "s3://bucket/not-checked-offline.jsonl"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "spec.model.base:" in err and "model directory does not exist" in err
    assert "spec.data.prompts[1]: builtin://data/nope.jsonl: no such builtin data file" in err
    assert f"spec.evaluation.tasks[0].uri: {tmp_path / 'arc.jsonl'}: no such file" in err
