"""The lm-evaluation-harness glue that needs no model: result keys, task YAMLs made local."""

from __future__ import annotations

import pytest
import yaml

from cream_stages import lm_harness
from cream_stages.contract import EvalTask, StageInputError
from cream_stages.data import BUILTIN_DATA_DIR


def _task(uri, **kw):
    return EvalTask(name="t", uri=uri, format="lm_eval", **kw)


def test_result_keys_default_to_acc_and_filter_none():
    assert lm_harness.result_key(None) == "acc,none"
    assert lm_harness.result_key("acc_norm") == "acc_norm,none"
    assert lm_harness.result_key("exact_match,strict-match") == "exact_match,strict-match"


def test_metric_and_fewshot_belong_to_lm_eval_tasks_only():
    with pytest.raises(ValueError, match="lm_eval only"):
        EvalTask(name="t", uri="x.jsonl", format="gsm8k", metric="acc")
    with pytest.raises(ValueError, match="lm_eval only"):
        EvalTask(name="t", uri="x.jsonl", format="multiple_choice", fewshot=2)


def test_builtin_task_yaml_data_files_become_local_paths(tmp_path):
    name = lm_harness.materialise_task_yaml(_task("builtin://data/lm_eval_arc_easy.yaml"),
                                            tmp_path)
    assert name == "cream_arc_easy"
    doc = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert doc["dataset_kwargs"]["data_files"] == {
        "test": str(BUILTIN_DATA_DIR / "arc_easy.jsonl")}


def test_relative_and_builtin_data_files_in_a_users_yaml(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "items.jsonl").write_text('{"q": 1}\n')
    (src / "task.yaml").write_text(yaml.safe_dump({
        "task": "mine", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": "items.jsonl",
                                          "train": ["builtin://data/gsm8k.jsonl"]}}}))
    work = tmp_path / "work"
    work.mkdir()
    assert lm_harness.materialise_task_yaml(_task(str(src / "task.yaml")), work) == "mine"
    files = yaml.safe_load((work / "t.yaml").read_text())["dataset_kwargs"]["data_files"]
    assert files == {"test": str(src / "items.jsonl"),
                     "train": [str(BUILTIN_DATA_DIR / "gsm8k.jsonl")]}


@pytest.mark.parametrize(("doc", "needle"), [
    ({"dataset_path": "json"}, "field 'task'"),
    ({"task": "x", "dataset_kwargs": {"data_files": "missing.jsonl"}}, "no such data file"),
    ({"task": "x", "dataset_kwargs": {"data_files": "http://h/x.jsonl"}}, "local, s3://"),
])
def test_bad_task_yamls_are_input_errors(tmp_path, doc, needle):
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(StageInputError, match=needle):
        lm_harness.materialise_task_yaml(_task(str(tmp_path / "task.yaml")), tmp_path)


def test_the_accuracy_is_the_named_metric_and_a_missing_one_lists_the_others():
    report = {"results": {"h": {"acc,none": 0.5, "acc_stderr,none": "N/A",
                                "acc_norm,none": 0.75, "sample_len": 12}},
              "n-samples": {"h": {"original": 12, "effective": 8}}}
    res = lm_harness._accuracy(_task("x", metric="acc_norm"), "h", report)
    assert (res.accuracy, res.items) == (0.75, 8)
    with pytest.raises(StageInputError) as exc:
        lm_harness._accuracy(_task("x", metric="exact_match"), "h", report)
    assert "'metric'" in str(exc.value) and "acc,none, acc_norm,none" in str(exc.value)
