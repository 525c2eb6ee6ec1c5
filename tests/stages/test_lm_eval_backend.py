"""The evaluate stage with lm-evaluation-harness tasks, on the tiny model.

lm-eval's multiple-choice accuracy is recomputed here from the model's own log-likelihoods (the
harness's rule: the choice with the highest log p(" " + choice | context) wins), so the test fails
if lm-eval evaluated any other model or tokenisation than the stage loaded.
"""

from __future__ import annotations

import json

import torch

from cream_stages.data import read_records
from cream_stages.logprobs import token_logps
from cream_stages.models import load_model
from cream_stages.runner import main

ARC = "builtin://data/arc_easy.jsonl"


def _evaluate(tmp_path, tasks, name="req.json"):
    out = tmp_path / "out"
    request = {"stage": "evaluate", "output": str(out), "model": "builtin://tiny-llama",
               "tasks": tasks, "max_tokens": 8, "backend": "transformers", "seed": 3}
    (tmp_path / name).write_text(json.dumps(request))
    return main(["evaluate", "--request", str(tmp_path / name)]), out


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([whole])
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[0, n_context:] = True
    with torch.no_grad():
        return float(token_logps(model, ids, torch.ones_like(ids), target).sum())


def test_lm_eval_accuracy_is_the_models_own_loglikelihood_choice(tmp_path):
    code, out = _evaluate(tmp_path, [
        {"name": "ours", "uri": ARC, "format": "multiple_choice"},
        {"name": "harness", "uri": "builtin://data/lm_eval_arc_easy.yaml", "format": "lm_eval"},
    ])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"] == {"predictions": "predictions.jsonl", "lm_eval": "lm_eval.json"}
    assert set(manifest["metrics"]["accuracy"]) == {"ours", "harness"}
    assert manifest["metrics"]["counts"]["harness"] == 12

    model, tokenizer, _ = load_model("builtin://tiny-llama")
    right = 0
    items = read_records(ARC)
    for item in items:
        context = f"Question: {item['question']['stem']}\nAnswer:"
        choices = item["question"]["choices"]
        scores = [_loglikelihood(model, tokenizer, context, " " + c["text"]) for c in choices]
        best = max(range(len(choices)), key=scores.__getitem__)
        right += choices[best]["label"] == item["answerKey"]
    assert manifest["metrics"]["accuracy"]["harness"] == right / len(items)
    raw = json.loads((out / "lm_eval.json").read_text())
    assert raw["harness"]["acc,none"] == right / len(items)


def test_an_unknown_metric_fails_the_stage_naming_the_field(tmp_path, capsys):
    code, out = _evaluate(tmp_path, [{"name": "h", "uri": "builtin://data/lm_eval_gsm8k.yaml",
                                      "format": "lm_eval", "metric": "acc", "limit": 2}])
    assert code == 2
    err = capsys.readouterr().err
    assert "'metric'" in err and "exact_match,strict-match" in err
    assert not (out / "manifest.json").exists()
