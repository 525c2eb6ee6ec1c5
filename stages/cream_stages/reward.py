"""Stage `reward`: an external reward model scores every sampled response (reward_models.py).

A classic reward model scores [prompt, response]; a CLoud one first writes a critique of each
response (greedy, at most critique_tokens), kept in rewards.jsonl beside the reward so a person
can read why a response won. consistency then pairs each prompt's best and worst rewarded
responses. The reward model is fixed across iterations: its rankings have no previous model to be
consistent with, so its pairs carry weight 1 (plain reward-model DPO).
"""

from __future__ import annotations

import logging
import math
import statistics

from . import reward_models as rmod
from .artifacts import join
from .contract import REWARDS_FILE, RewardRequest, StageInputError, StageResult
from .records import ResponsesRecord, RewardsRecord, read, write

log = logging.getLogger(__name__)


def run(req: RewardRequest) -> StageResult:
    from .infer_transformers import generate  # noqa: PLC0415 - torch once the request is valid
    from .models import default_device  # noqa: PLC0415

    rows = read(req.responses, ResponsesRecord)
    if not rows:
        raise StageInputError(f"{req.responses}: no responses to reward")
    pairs = [(row.prompt, response) for row in rows for response in row.responses]
    rm = rmod.load_reward_model(req.model, req.model_type, req.precision, default_device())
    log.info("%s reward model %s scores %d responses", req.model_type, req.model, len(pairs))
    critiques: list[str] | None = None
    if req.model_type == "cloud":
        critiques = [texts[0] for texts in generate(
            rm.model, rm.tokenizer, [rmod.critique_request(p, r) for p, r in pairs],
            sample=False, max_tokens=req.critique_tokens, batch_size=req.batch_size,
            seed=req.seed, desc="critique")]
    conversations = [rmod.conversation(p, r, critiques[i] if critiques else None)
                     for i, (p, r) in enumerate(pairs)]
    values = rmod.rewards(rm, conversations, req.max_length, req.batch_size)
    if not all(math.isfinite(v) for v in values):
        raise StageInputError(f"{req.model}: the reward model returned a non-finite reward "
                              "(NaN or infinity); check its weights and precision")

    out, k = [], 0
    for row in rows:
        n = len(row.responses)
        out.append(RewardsRecord(
            prompt_id=row.prompt_id, rewards=values[k:k + n],
            critiques=critiques[k:k + n] if critiques else [],
            responses_digest=row.digest()))
        k += n
    write(join(req.output, REWARDS_FILE), out)
    metrics = {"responses": len(values), "reward_mean": statistics.fmean(values),
               # The spread of rewards: a reward model that scores everything alike ranks nothing.
               "reward_std": statistics.pstdev(values),
               "reward_min": min(values), "reward_max": max(values)}
    if critiques:
        lengths = [len(rm.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in critiques]
        metrics["critique_tokens_mean"] = statistics.fmean(lengths)
    return StageResult(inputs={"model": req.model, "responses": req.responses},
                       outputs={"rewards": REWARDS_FILE}, metrics=metrics)
