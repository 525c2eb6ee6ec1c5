"""The consistency stage on hand-made score files: values keyed by prompt id, end to end."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from cream_stages.records import responses_digest
from cream_stages.runner import main

PROMPTS = ["p1", "p2", "p3"]
S_CUR = {"p1": [-10.0, -12.0, -9.0, -15.0], "p2": [-5.0, -6.0, -7.0, -8.0],
         "p3": [-20.0, -11.0, -14.0, -13.0]}
S_PREV = {"p1": [-11.0, -11.0, -12.0, -13.0], "p2": [-5.0, -6.0, -7.0, -8.0],  # p2: r_t all 0
          "p3": [-18.0, -16.0, -12.0, -15.0]}
S_PREV2 = {"p1": [-9.0, -14.0, -10.0, -12.0], "p2": [-4.0, -9.0, -6.0, -8.0],
           "p3": [-17.0, -15.0, -13.0, -16.0]}
LENGTHS = {"p1": [2, 8, 3, 5], "p2": [1, 2, 3, 4], "p3": [10, 2, 6, 3]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _responses(p: str, sample: str = "r") -> list[str]:
    return [f"{p}-{sample}{i}" for i in range(4)]


def _digest(p: str, sample: str = "r") -> str:
    return responses_digest(f"question {p}", _responses(p, sample))


def _setup(tmp_path, previous=S_PREV):
    responses = _write(tmp_path / "responses.jsonl", [
        {"prompt_id": p, "prompt": f"question {p}", "responses": _responses(p)}
        for p in PROMPTS])

    def scores(name, s):
        return _write(tmp_path / f"{name}.jsonl", [
            {"prompt_id": p, "logps": s[p], "lengths": LENGTHS[p], "responses_digest": _digest(p)}
            for p in PROMPTS])

    return responses, scores("cur", S_CUR), scores("prev", previous), scores("prev2", S_PREV2)


def _run(tmp_path, **fields):
    out = tmp_path / "out"
    request = {"stage": "consistency", "output": str(out), "iteration": 1, **fields}
    (tmp_path / "req.json").write_text(json.dumps(request))
    code = main(["consistency", "--request", str(tmp_path / "req.json")])
    return code, out


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _c(r_t, r_prev):
    ordinal = stats.rankdata
    tau = stats.kendalltau(ordinal(r_t, method="ordinal"),
                           ordinal(r_prev, method="ordinal")).statistic
    return (tau + 1) / 2


def _expected_c_t1(pid):
    r_t = [a - b for a, b in zip(S_CUR[pid], S_PREV[pid], strict=True)]
    r_prev = [s / n for s, n in zip(S_PREV[pid], LENGTHS[pid], strict=True)]
    return _c(r_t, r_prev)


def test_dropped_prompt_does_not_shift_the_others(tmp_path):
    responses, cur, prev, _ = _setup(tmp_path)
    code, out = _run(tmp_path, responses=responses, current=cur, previous=prev,
                     strategy="dynamic")
    assert code == 0
    pairs = {r["prompt_id"]: r for r in _rows(out / "pairs.jsonl")}
    assert set(pairs) == {"p1", "p3"}
    for pid in ("p1", "p3"):
        assert pairs[pid]["weight"] == pytest.approx(_expected_c_t1(pid), abs=1e-12)
    per_prompt = {r["prompt_id"]: r for r in _rows(out / "consistency.jsonl")}
    assert per_prompt["p2"]["kept"] is False and per_prompt["p2"]["c"] is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["dropped"] == 1
    assert manifest["metrics"]["pairs"] == 2 and manifest["metrics"]["prompts"] == 3
    assert manifest["metrics"]["consistency_rate"] == pytest.approx(
        (_expected_c_t1("p1") + _expected_c_t1("p3")) / 2)


def test_pairs_carry_argmax_argmin_and_current_model_reference_logps(tmp_path):
    responses, cur, prev, _ = _setup(tmp_path)
    code, out = _run(tmp_path, responses=responses, current=cur, previous=prev)
    assert code == 0
    for row in _rows(out / "pairs.jsonl"):
        pid = row["prompt_id"]
        r_t = [a - b for a, b in zip(S_CUR[pid], S_PREV[pid], strict=True)]
        c, rj = r_t.index(max(r_t)), r_t.index(min(r_t))
        assert (row["chosen_index"], row["rejected_index"]) == (c, rj)
        assert (row["chosen"], row["rejected"]) == (f"{pid}-r{c}", f"{pid}-r{rj}")
        assert row["ref_chosen_logp"] == S_CUR[pid][c]
        assert row["ref_rejected_logp"] == S_CUR[pid][rj]
        assert row["prompt"] == f"question {pid}"


def test_t1_normalises_m0_by_length_and_t2_uses_m_t_minus_2(tmp_path):
    responses, cur, prev, prev2 = _setup(tmp_path)
    code, out = _run(tmp_path, responses=responses, current=cur, previous=prev, iteration=2,
                     previous2=prev2, strategy="dynamic")
    assert code == 0
    for row in _rows(out / "pairs.jsonl"):
        pid = row["prompt_id"]
        r_t = [a - b for a, b in zip(S_CUR[pid], S_PREV[pid], strict=True)]
        r_prev = [a - b for a, b in zip(S_PREV[pid], S_PREV2[pid], strict=True)]
        assert row["weight"] == pytest.approx(_c(r_t, r_prev), abs=1e-12)
    # At t = 1 the length normalisation matters on this fixture (p3's C differs without it).
    r_t = [a - b for a, b in zip(S_CUR["p3"], S_PREV["p3"], strict=True)]
    assert _expected_c_t1("p3") != pytest.approx(_c(r_t, S_PREV["p3"]))


@pytest.mark.parametrize("strategy", ["avg", "none"])
def test_avg_and_none_weights(tmp_path, strategy):
    responses, cur, prev, _ = _setup(tmp_path)
    code, out = _run(tmp_path, responses=responses, current=cur, previous=prev,
                     strategy=strategy)
    assert code == 0
    rate = (_expected_c_t1("p1") + _expected_c_t1("p3")) / 2
    expected = rate if strategy == "avg" else 1.0
    assert [r["weight"] for r in _rows(out / "pairs.jsonl")] == pytest.approx([expected] * 2)


def test_scores_that_do_not_match_the_responses_fail_naming_the_file(tmp_path, capsys):
    responses, cur, _, _ = _setup(tmp_path)
    bad = _write(tmp_path / "bad.jsonl", [
        {"prompt_id": p, "logps": S_PREV[p][:3], "lengths": LENGTHS[p][:3],
         "responses_digest": _digest(p)} for p in PROMPTS])
    code, out = _run(tmp_path, responses=responses, current=cur, previous=bad)
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "'logps'" in err
    assert not (out / "manifest.json").exists()


def test_scores_of_another_sample_are_refused_despite_same_ids_and_counts(tmp_path, capsys):
    # Same prompt ids, same number of responses per prompt: only the responses differ (another
    # sample of the same prompts). Without the binding these scores would be ranked as if they
    # belonged to the responses file.
    responses, cur, _, _ = _setup(tmp_path)
    other = _write(tmp_path / "other-sample.jsonl", [
        {"prompt_id": p, "logps": S_PREV[p], "lengths": LENGTHS[p],
         "responses_digest": _digest(p, sample="s")} for p in PROMPTS])
    code, out = _run(tmp_path, responses=responses, current=cur, previous=other)
    assert code == 2
    err = capsys.readouterr().err
    assert "other-sample.jsonl" in err and "'responses_digest'" in err and "another sample" in err
    assert not (out / "manifest.json").exists()


def test_iteration_two_requires_previous2(tmp_path, capsys):
    responses, cur, prev, _ = _setup(tmp_path)
    code, out = _run(tmp_path, responses=responses, current=cur, previous=prev, iteration=2)
    assert code == 2 and "previous2" in capsys.readouterr().err
    assert not out.exists()


def test_scores_from_different_backends_are_refused(tmp_path, capsys):
    responses, cur, prev, _ = _setup(tmp_path)
    for name, backend in (("cur", "transformers"), ("prev", "vllm")):
        d = tmp_path / name
        d.mkdir()
        (d / "scores.jsonl").write_text((tmp_path / f"{name}.jsonl").read_text())
        (d / "manifest.json").write_text(json.dumps(
            {"stage": "score", "request": {"backend": backend, "precision": "float32"}}))
    code, _ = _run(tmp_path, responses=responses, current=str(tmp_path / "cur/scores.jsonl"),
                   previous=str(tmp_path / "prev/scores.jsonl"))
    assert code == 2 and "different backends" in capsys.readouterr().err


REWARDS = {"p1": [0.5, -1.0, 2.0, 0.1], "p2": [0.3, 0.3, 0.3, 0.3],  # p2: all tie, dropped
           "p3": [-2.0, 1.5, 1.5, -0.5]}  # p3: chosen ties broken by the first index


def test_reward_model_pairs_are_best_vs_worst_reward_with_weight_one(tmp_path):
    """An external reward model's rewards make the pairs: argmax vs argmin, all-tied prompts
    dropped, weight 1 whatever the strategy (a fixed model has no previous ranking), and the
    current model's log-probs as dpo's reference."""
    responses, cur, _, _ = _setup(tmp_path)
    rewards = _write(tmp_path / "rewards.jsonl", [
        {"prompt_id": p, "rewards": REWARDS[p], "critiques": [], "responses_digest": _digest(p)}
        for p in PROMPTS])
    code, out = _run(tmp_path, responses=responses, current=cur, reward="rewardModel",
                     rewards=rewards, strategy="dynamic")
    assert code == 0
    pairs = {r["prompt_id"]: r for r in _rows(out / "pairs.jsonl")}
    assert sorted(pairs) == ["p1", "p3"]
    assert (pairs["p1"]["chosen_index"], pairs["p1"]["rejected_index"]) == (2, 1)
    assert (pairs["p3"]["chosen_index"], pairs["p3"]["rejected_index"]) == (1, 0)
    for pid, pair in pairs.items():
        assert pair["weight"] == 1.0
        assert pair["ref_chosen_logp"] == S_CUR[pid][pair["chosen_index"]]
        assert pair["ref_rejected_length"] == LENGTHS[pid][pair["rejected_index"]]
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert (metrics["pairs"], metrics["dropped"], metrics["consistency_rate"]) == (2, 1, None)
    assert metrics["reward_model_margin_mean"] == pytest.approx(((2.0 + 1.0) + (1.5 + 2.0)) / 2)


def test_reward_model_rewards_of_another_sample_are_refused(tmp_path):
    responses, cur, _, _ = _setup(tmp_path)
    rewards = _write(tmp_path / "rewards.jsonl", [
        {"prompt_id": p, "rewards": REWARDS[p], "critiques": [],
         "responses_digest": _digest(p, sample="other")} for p in PROMPTS])
    code, out = _run(tmp_path, responses=responses, current=cur, reward="rewardModel",
                     rewards=rewards)
    assert code == 2
    assert not (out / "manifest.json").exists()
