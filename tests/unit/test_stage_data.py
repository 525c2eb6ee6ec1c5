"""Reading the stages' data files: the formats accepted, and errors naming file and field."""

from __future__ import annotations

import json

import pytest

from cream_stages import data, records
from cream_stages.contract import StageInputError


def _file(tmp_path, rows, name="f.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_builtin_data_uris_resolve_to_the_bundled_files():
    for uri in data.builtin_data_files():
        assert data.read_records(uri)
    assert data.resolve_data_uri("/some/path.jsonl") == "/some/path.jsonl"
    assert data.resolve_data_uri("s3://b/k.jsonl") == "s3://b/k.jsonl"
    with pytest.raises(StageInputError, match="builtin://data/nope.jsonl"):
        data.resolve_data_uri("builtin://data/nope.jsonl")
    with pytest.raises(StageInputError):
        data.resolve_data_uri("builtin://data/../corpus.txt")


def test_prompt_formats(tmp_path):
    uri = _file(tmp_path, [
        {"id": "a", "prompt": "Plain?"},
        {"id": 7, "instruction": "Do this", "input": "with that"},
        {"prompt_id": "c", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Chat?"}]},
    ])
    assert [(p.id, p.text) for p in data.load_prompts(uri)] == [
        ("a", "Plain?"), ("7", "Do this\n\nwith that"), ("c", "Chat?")]
    assert len(data.load_prompts(uri, limit=2)) == 2


def test_reference_prompt_set_keyed_by_id(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"u1": [{"role": "user", "content": "Hi?"}],
                                "u2": [{"role": "user", "content": "Why?"}]}))
    assert [(p.id, p.text) for p in data.load_prompts(str(path))] == [("u1", "Hi?"),
                                                                      ("u2", "Why?")]


def test_bundled_prompt_sets():
    for name in ("prompts-1.jsonl", "prompts-2.jsonl"):
        prompts = data.load_prompts(f"builtin://data/{name}")
        assert 12 <= len(prompts) <= 16


@pytest.mark.parametrize(("rows", "needle"), [
    ([{"prompt": "no id"}], "missing field 'id'"),
    ([{"id": "a"}], "missing field 'prompt'"),
    ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "duplicate prompt id a"),
    ([{"id": "a", "messages": [{"role": "assistant", "content": "x"}]}], "one user message"),
    ([{"id": "a", "prompt": 3}], "'prompt'"),
])
def test_bad_prompt_sets(tmp_path, rows, needle):
    uri = _file(tmp_path, rows)
    with pytest.raises(StageInputError) as exc:
        data.load_prompts(uri)
    assert uri in str(exc.value) and needle in str(exc.value)


def test_prompt_set_with_no_prompts(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("[]")
    with pytest.raises(StageInputError, match="no prompts"):
        data.load_prompts(str(path))


def test_sft_formats(tmp_path):
    uri = _file(tmp_path, [
        {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]},
        {"instruction": "Q2", "input": "ctx", "output": "A2"},
        {"prompt": "Q3", "response": "A3"},
        {"selected": [{"role": "user", "content": "Q4"}, {"role": "assistant", "content": "A4"}],
         "rejected": [{"role": "user", "content": "Q4"}, {"role": "assistant", "content": "no"}]},
    ])
    convs = data.load_conversations(uri)
    assert [c[-1]["content"] for c in convs] == ["A1", "A2", "A3", "A4"]
    assert convs[1][0]["content"] == "Q2\n\nctx"


def test_reference_sft_file_keyed_by_id(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text(json.dumps({"u1": [{"role": "user", "content": "Q"},
                                       {"role": "assistant", "content": "A"}]}))
    assert data.load_conversations(str(path)) == [[{"role": "user", "content": "Q"},
                                                   {"role": "assistant", "content": "A"}]]


@pytest.mark.parametrize(("row", "needle"), [
    ({"instruction": "Q"}, "'output'"),
    ({"output": "A"}, "'instruction'"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "must end with an assistant"),
    ({"messages": [{"role": "robot", "content": "Q"}]}, "role"),
])
def test_bad_sft_records(tmp_path, row, needle):
    uri = _file(tmp_path, [row])
    with pytest.raises(StageInputError) as exc:
        data.load_conversations(uri)
    assert uri in str(exc.value) and needle in str(exc.value)


def test_scores_must_be_finite_and_lengths_positive(tmp_path):
    digest = "0" * 64
    uri = _file(tmp_path, [{"prompt_id": "a", "logps": [1.0, float("nan")], "lengths": [1, 2],
                            "responses_digest": digest}])
    with pytest.raises(StageInputError, match="'logps'"):
        records.read(uri, records.ScoresRecord)
    uri = _file(tmp_path, [{"prompt_id": "a", "logps": [1.0, 2.0], "lengths": [1, 0],
                            "responses_digest": digest}])
    with pytest.raises(StageInputError, match="'lengths'"):
        records.read(uri, records.ScoresRecord)


def test_pairs_need_weights_in_unit_interval(tmp_path):
    row = {"prompt_id": "a", "prompt": "p", "chosen": "c", "rejected": "r", "weight": 1.5,
           "ref_chosen_logp": -1.0, "ref_rejected_logp": -2.0}
    with pytest.raises(StageInputError, match="'weight'"):
        records.read(_file(tmp_path, [row]), records.PairRecord)
    del row["ref_chosen_logp"]
    with pytest.raises(StageInputError, match="missing field 'ref_chosen_logp'"):
        records.read(_file(tmp_path, [row]), records.PairRecord)


def test_model_uris_are_validated_without_building(tmp_path):
    from cream_stages.models import validate_model_uri

    validate_model_uri("builtin://tiny-llama")
    validate_model_uri("hf://meta-llama/Meta-Llama-3-8B-Instruct")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    validate_model_uri(str(tmp_path / "ckpt"))
    for uri, needle in (("builtin://huge", "unknown builtin model"), ("hf://", "hf://org/name"),
                        (str(tmp_path / "none"), "does not exist"),
                        (str(tmp_path), "no config.json")):
        with pytest.raises(StageInputError, match=needle):
            validate_model_uri(uri)
