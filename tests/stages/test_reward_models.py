"""External reward models on the tiny ones (`builtin://tiny-reward`, classic; `builtin://tiny-cloud`,
Critique-out-Loud): each reward checked against the closed form it is defined by (the head applied
to the decoder's last hidden state at the conversation's last token), independent of batching;
the stage's file and metrics; bad reward models refused with exit 2; and a schedule with both
kinds end to end with `cream run`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from stage_helpers import cream_run, run_stage, termination_message

from cream_stages import reward_models as rmod
from cream_stages.infer_transformers import generate
from cream_stages.tokenization import encode_conversation

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = {"p1": ("What is 2+2?", ["4", "It is four.", "five", "2+2 is 4, since two and two "
                                   "make four; anything else would be wrong."]),
           "p2": ("Name a colour.", ["Red", "The sky is blue, so: blue.", "green"])}
PAIRS = [(q, r) for q, rs in PROMPTS.values() for r in rs]


def _by_hand(rm: rmod.RewardModel, turns: list[dict]) -> float:
    """The definition, one unpadded sequence at a time: the head on the last token's final hidden
    state (the classic model's head is its `score` layer)."""
    ids = torch.tensor([encode_conversation(rm.tokenizer, turns, 2048).input_ids])
    with torch.no_grad():
        hidden = rm.model.base_model(input_ids=ids).last_hidden_state[0, -1]
        head = rm.model.score if rm.kind == "classic" else rm.head
        return float(head(hidden))


@pytest.mark.parametrize("uri,kind", [("builtin://tiny-reward", "classic"),
                                      ("builtin://tiny-cloud", "cloud")])
def test_rewards_are_the_head_on_the_last_token_in_any_batch(uri, kind):
    rm = rmod.load_reward_model(uri, kind, "float32", "cpu")
    critiques = None
    if kind == "cloud":
        critiques = [t[0] for t in generate(
            rm.model, rm.tokenizer, [rmod.critique_request(q, r) for q, r in PAIRS],
            sample=False, max_tokens=12, batch_size=4)]
        # Greedy: each critique is what the model writes for that conversation alone.
        alone = generate(rm.model, rm.tokenizer, [rmod.critique_request(*PAIRS[-1])],
                         sample=False, max_tokens=12, batch_size=1)[0][0]
        assert alone == critiques[-1]
    turns = [rmod.conversation(q, r, critiques[i] if critiques else None)
             for i, (q, r) in enumerate(PAIRS)]
    expected = [_by_hand(rm, t) for t in turns]
    for batch_size in (1, 3, len(turns)):
        got = rmod.rewards(rm, turns, max_length=2048, batch_size=batch_size)
        assert got == pytest.approx(expected, abs=1e-5), batch_size
    assert len(set(round(v, 6) for v in expected)) == len(expected)  # they rank


def test_the_reward_stage_writes_rewards_critiques_and_their_spread(tmp_path):
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt_id": pid, "prompt": q, "responses": rs})
                                 + "\n" for pid, (q, rs) in PROMPTS.items()))
    for uri, kind in (("builtin://tiny-reward", "classic"), ("builtin://tiny-cloud", "cloud")):
        out = tmp_path / kind
        proc = run_stage("reward", {"stage": "reward", "output": str(out), "model": uri,
                                    "model_type": kind, "responses": str(responses),
                                    "critique_tokens": 8, "batch_size": 2}, tmp_path, kind)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
        assert [r["prompt_id"] for r in rows] == list(PROMPTS)
        assert [len(r["rewards"]) for r in rows] == [4, 3]
        rewards = [v for r in rows for v in r["rewards"]]
        metrics = json.loads((out / "manifest.json").read_text())["metrics"]
        assert metrics["responses"] == 7
        assert metrics["reward_mean"] == pytest.approx(statistics.fmean(rewards))
        assert metrics["reward_std"] == pytest.approx(statistics.pstdev(rewards))
        assert metrics["reward_std"] > 0
        if kind == "cloud":
            assert all(len(r["critiques"]) == len(r["rewards"]) for r in rows)
            assert 0 < metrics["critique_tokens_mean"] <= 8
        else:
            assert all(r["critiques"] == [] for r in rows)


@pytest.mark.parametrize("uri,kind,words", [
    ("builtin://tiny-llama", "classic", "not a scalar reward model: its head has 2 outputs"),
    ("builtin://tiny-llama", "cloud", "not a CLoud reward model: no reward_head.safetensors"),
])
def test_a_model_that_is_not_that_kind_of_reward_model_is_refused(tmp_path, uri, kind, words):
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"prompt_id": "p", "prompt": "q", "responses": ["a", "b"]})
                         + "\n")
    out = tmp_path / "out"
    proc = run_stage("reward", {"stage": "reward", "output": str(out), "model": uri,
                                "model_type": kind, "responses": str(responses)}, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert words in termination_message(tmp_path, "reward")
    assert not (out / "manifest.json").exists()


def test_reward_model_iterations_end_to_end(tmp_path):
    """SFT, then one iteration ranked by the classic reward model and one by the CLoud one: the
    pairs are each prompt's best and worst rewarded responses, weight 1, and the results carry
    the rewards' mean and spread."""
    doc = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
    spec = doc["spec"]
    del spec["iterations"]
    spec["schedule"] = [
        {"kind": "sft"},
        {"kind": "selfReward", "reward": "rewardModel",
         "rewardModel": {"uri": "builtin://tiny-reward", "type": "classic"}},
        {"kind": "selfReward", "reward": "rewardModel",
         "rewardModel": {"uri": "builtin://tiny-cloud", "type": "cloud", "critiqueTokens": 16}}]
    spec["data"]["maxPrompts"] = 6
    spec["sft"]["epochs"] = 2
    spec["evaluation"] = {"tasks": [], "baseline": False}
    proc, out = cream_run(doc, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["iteration"]: r for r in json.loads((out / "results.json").read_text())
               ["iterations"]}
    for t, kind in ((1, "classic"), (2, "cloud")):
        reward = json.loads((out / f"iter-{t}/reward/manifest.json").read_text())
        assert reward["request"]["model_type"] == kind
        rows = {r["prompt_id"]: r for r in map(json.loads, (out / f"iter-{t}/reward/rewards.jsonl")
                                                 .read_text().splitlines())}
        assert len(rows) == 6
        assert all(bool(r["critiques"]) == (kind == "cloud") for r in rows.values())
        pairs = [json.loads(line) for line in
                 (out / f"iter-{t}/consistency/pairs.jsonl").read_text().splitlines()]
        assert pairs
        for pair in pairs:
            rewards = rows[pair["prompt_id"]]["rewards"]
            assert rewards[pair["chosen_index"]] == max(rewards)
            assert rewards[pair["rejected_index"]] == min(rewards)
            assert pair["weight"] == 1.0
        assert results[t]["reward_model_mean"] == reward["metrics"]["reward_mean"]
        assert results[t]["reward_model_std"] == reward["metrics"]["reward_std"]
        assert results[t]["pairs"] == len(pairs)
    assert (out / "models/M3/model.safetensors").is_file()
