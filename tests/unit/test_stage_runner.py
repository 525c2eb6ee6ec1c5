"""The stage contract around every stage: request validation, errors, manifest, no-op reruns."""

from __future__ import annotations

import json

import pytest

from cream_stages.records import responses_digest
from cream_stages.runner import main


@pytest.fixture
def term_log(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv("CREAM_TERMINATION_LOG", str(path))
    return path


def _request(tmp_path, obj, name="req.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _consistency_inputs(tmp_path):
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"prompt_id": "p", "prompt": "q", "responses": ["a", "b"]})
                         + "\n")
    for name, logps in (("cur", [-1.0, -3.0]), ("prev", [-2.0, -2.0])):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(
            {"prompt_id": "p", "logps": logps, "lengths": [1, 2],
             "responses_digest": responses_digest("q", ["a", "b"])}) + "\n")
    return {"stage": "consistency", "output": str(tmp_path / "out"), "iteration": 1,
            "responses": str(responses), "current": str(tmp_path / "cur.jsonl"),
            "previous": str(tmp_path / "prev.jsonl")}


def test_manifest_is_written_and_a_rerun_is_a_no_op(tmp_path, capsys):
    uri = _request(tmp_path, _consistency_inputs(tmp_path))
    assert main(["consistency", "--request", uri]) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "consistency" and manifest["schema_version"] == 1
    assert manifest["outputs"] == {"pairs": "pairs.jsonl", "per_prompt": "consistency.jsonl"}
    assert manifest["inputs"]["previous2"] is None
    assert manifest["request"]["iteration"] == 1
    assert manifest["timings"]["seconds"] >= 0 and manifest["timings"]["cpu_seconds"] >= 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["consistency", "--request", uri]) == 0
    assert "already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_invalid_request_field_is_named(tmp_path, capsys, term_log):
    req = _consistency_inputs(tmp_path)
    req["method"] = "pearson"
    uri = _request(tmp_path, req)
    assert main(["consistency", "--request", uri]) == 2
    err = capsys.readouterr().err
    assert uri in err and "'method'" in err
    assert "'method'" in term_log.read_text()
    assert not (tmp_path / "out").exists()


def test_request_for_another_stage_is_refused(tmp_path, capsys):
    uri = _request(tmp_path, _consistency_inputs(tmp_path))
    assert main(["dpo", "--request", uri]) == 2
    assert "'stage'" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "JSON object"),
])
def test_malformed_request_file(tmp_path, capsys, term_log, content, needle):
    uri = _request(tmp_path, content)
    assert main(["sample", "--request", uri]) == 2
    err = capsys.readouterr().err
    assert uri in err and needle in err
    assert needle in term_log.read_text()


def test_missing_request_file(tmp_path, capsys):
    assert main(["sample", "--request", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: no such file" in capsys.readouterr().err


def test_unexpected_errors_exit_1(tmp_path, capsys, term_log):
    req = _consistency_inputs(tmp_path)
    (tmp_path / "out").write_text("a file where the output directory should be")
    uri = _request(tmp_path, req)
    assert main(["consistency", "--request", uri]) == 1
    assert "unexpected error" in term_log.read_text()


def test_s3_failing_on_its_side_is_not_bad_input():
    """A 5xx after every retry (say MinIO still starting) must let the Job retry the stage;
    exit code 2 (bad input) would fail the run at once."""
    from botocore.exceptions import ClientError

    from cream_stages import artifacts

    def error(status: int, code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    unavailable = artifacts._s3_error("s3://b/k", error(503, "XMinioServerNotInitialized"))
    assert isinstance(unavailable, artifacts.StorageUnavailable)
    assert not isinstance(unavailable, artifacts.ArtifactError)
    missing = artifacts._s3_error("s3://b/k", error(404, "NoSuchKey"))
    assert isinstance(missing, artifacts.ArtifactError) and "no such object" in str(missing)
