"""Stage `consistency`: rewards, per-prompt consistency C, and the weighted preference pairs.

r_t = s_{M_t} - s_{M_{t-1}}; r_{t-1} = s_{M_{t-1}} - s_{M_{t-2}} (t >= 2) or s_{M0} / |y| (t = 1,
where `previous` holds M0's scores). The math is in consistency_math.py; this stage reads and
cross-checks the files and keys every value by prompt id. The reported consistency_rate is the
mean C over the kept prompts, whatever the strategy (with `none` it is measured, not used).

With reward judge or rewardModel, an external ranking makes the pairs instead (_run_external):
best vs worst by judge score or reward-model reward, C only between two judges' rankings.
"""

from __future__ import annotations

import logging

from . import artifacts
from . import consistency_math as cm
from . import judge_math as jm
from .contract import (
    MANIFEST,
    PAIRS_FILE,
    PER_PROMPT_FILE,
    ConsistencyRequest,
    StageInputError,
    StageResult,
)
from .records import (
    ConsistencyRecord,
    JudgementsRecord,
    PairRecord,
    ResponsesRecord,
    RewardsRecord,
    ScoresRecord,
    check_scores_match,
    read,
    write,
)

log = logging.getLogger(__name__)


def _score_manifest(scores_uri: str) -> dict | None:
    """The manifest next to a score file, if it was written by our score stage."""
    parent = scores_uri.rstrip("/").rsplit("/", 1)[0] if "/" in scores_uri else "."
    uri = artifacts.join(parent, MANIFEST)
    if not artifacts.exists(uri):
        return None
    manifest = artifacts.read_json(uri)
    return manifest if isinstance(manifest, dict) and manifest.get("stage") == "score" else None


def check_same_backend(uris: list[str]) -> None:
    """Every score of an iteration from the same backend and precision: vLLM and transformers
    log-probs differ slightly, enough to flip near-tied rankings."""
    seen: dict[tuple, str] = {}
    for uri in uris:
        manifest = _score_manifest(uri)
        if manifest is None:
            continue
        request = manifest.get("request", {})
        seen.setdefault((request.get("backend"), request.get("precision")), uri)
    if len(seen) > 1:
        detail = "; ".join(f"{uri}: backend {b}, precision {p}" for (b, p), uri in seen.items())
        raise StageInputError(f"scores of one iteration come from different backends or "
                              f"precisions ({detail})")


def _read_ranking(uri: str, record: type[JudgementsRecord] | type[RewardsRecord],
                  responses: list[ResponsesRecord]) -> dict[str, list[float | None]]:
    """A judge's or reward model's file, checked to cover these very responses (by digest): each
    prompt's scores by response (None: a response no judgement scored), keyed by prompt id."""
    loaded = {r.prompt_id: r for r in read(uri, record)}
    values = {}
    for row in responses:
        rec = loaded.get(row.prompt_id)
        scores = None if rec is None else \
            rec.scores if isinstance(rec, JudgementsRecord) else rec.rewards
        if rec is None or rec.responses_digest != row.digest() \
                or len(scores) != len(row.responses):
            raise StageInputError(f"{uri}: prompt_id {row.prompt_id}: no scores of these "
                                  "responses (missing, or made for another sample)")
        values[row.prompt_id] = scores
    return values


def run(req: ConsistencyRequest) -> StageResult:
    responses = read(req.responses, ResponsesRecord)
    if not responses:
        raise StageInputError(f"{req.responses}: no responses")
    if req.reward != "implicit":
        return _run_external(req, responses)
    score_uris = [u for u in (req.current, req.previous, req.previous2) if u is not None]
    scores = []
    for uri in score_uris:
        loaded = {r.prompt_id: r for r in read(uri, ScoresRecord)}
        check_scores_match(req.responses, responses, uri, loaded)
        scores.append(loaded)
    check_same_backend(score_uris)
    current, previous = scores[0], scores[1]
    previous2 = scores[2] if len(scores) == 3 else None

    results: dict[str, cm.PromptResult] = {}
    for row in responses:
        pid = row.prompt_id
        r_t = cm.current_rewards(current[pid].logps, previous[pid].logps)
        if previous2 is not None:
            r_prev = cm.previous_rewards(previous[pid].logps, previous2[pid].logps)
        else:
            r_prev = cm.previous_rewards(previous[pid].logps, lengths=previous[pid].lengths)
        results[pid] = cm.prompt_result(pid, r_t, r_prev, req.method)
    kept = [r for r in results.values() if r.kept]
    if not kept:
        raise StageInputError(f"{req.current}: every prompt's rewards r_t tie: no preference "
                              "pair can be formed")
    weights = cm.pair_weights(results, req.strategy)
    rate = cm.consistency_rate(results)

    field = cm.METHOD_FIELD[req.method]
    per_prompt = [ConsistencyRecord(prompt_id=r.prompt_id, kept=r.kept, c=r.c,
                                    **{field: r.agreement})
                  for r in results.values()]
    pairs = _pairs(responses, results, weights, current)
    dropped = len(results) - len(kept)
    if dropped:
        log.info("dropped %d prompt(s) whose rewards all tie", dropped)
    write(artifacts.join(req.output, PER_PROMPT_FILE), per_prompt)
    write(artifacts.join(req.output, PAIRS_FILE), pairs)
    inputs = {"responses": req.responses, "current": req.current, "previous": req.previous,
              "previous2": req.previous2}
    return StageResult(
        inputs=inputs,
        outputs={"pairs": PAIRS_FILE, "per_prompt": PER_PROMPT_FILE},
        metrics={"consistency_rate": rate, "pairs": len(pairs), "dropped": dropped,
                 "prompts": len(results), "method": req.method, "strategy": req.strategy},
    )


def _run_external(req: ConsistencyRequest, responses: list[ResponsesRecord]) -> StageResult:
    """Pairs from an external ranking, the judge's scores or the reward model's rewards: best vs
    worst; C (with previous_judgements) between this model's and the previous model's judge
    rankings; M_t's log-probs (current) the reference."""
    ref = {r.prompt_id: r for r in read(req.current, ScoresRecord)}
    check_scores_match(req.responses, responses, req.current, ref)
    if req.reward == "judge":
        source, prefix = req.judgements, "judge"
        current = _read_ranking(source, JudgementsRecord, responses)
        previous = _read_ranking(req.previous_judgements, JudgementsRecord, responses) \
            if req.previous_judgements else None
    else:
        source, prefix = req.rewards, "reward_model"
        current, previous = _read_ranking(source, RewardsRecord, responses), None
    results = {row.prompt_id: jm.prompt_result(
        row.prompt_id, current[row.prompt_id],
        previous[row.prompt_id] if previous else None, req.method)
        for row in responses}
    kept = {pid: r for pid, r in results.items() if r.kept}
    if not kept:
        raise StageInputError(f"{source}: no prompt has two responses with different "
                              f"{req.reward} scores: no preference pair can be formed")
    weights = jm.pair_weights(results, req.strategy)
    known = [r.c for r in kept.values() if r.c is not None]
    field = cm.METHOD_FIELD[req.method]
    per_prompt = [ConsistencyRecord(prompt_id=r.prompt_id, kept=r.kept, c=r.c,
                                    **({field: r.agreement} if r.agreement is not None else {}))
                  for r in results.values()]
    pairs = _pairs(responses, results, weights, ref)
    write(artifacts.join(req.output, PER_PROMPT_FILE), per_prompt)
    write(artifacts.join(req.output, PAIRS_FILE), pairs)
    margins = [current[p.prompt_id][p.chosen_index] - current[p.prompt_id][p.rejected_index]
               for p in pairs]
    inputs = {"responses": req.responses, "current": req.current}
    inputs.update({"judgements": req.judgements, "previous_judgements": req.previous_judgements}
                  if req.reward == "judge" else {"rewards": req.rewards})
    return StageResult(
        inputs=inputs,
        outputs={"pairs": PAIRS_FILE, "per_prompt": PER_PROMPT_FILE},
        metrics={
            # The mean C over the prompts both judges ranked; None without a previous judge.
            "consistency_rate": sum(known) / len(known) if known else None,
            "pairs": len(pairs), "dropped": len(results) - len(kept),
            "prompts": len(results), "reward": req.reward, "method": req.method,
            "strategy": req.strategy,
            "unscored_responses": sum(s is None for v in current.values() for s in v),
            f"{prefix}_margin_mean": sum(margins) / len(margins),
        },
    )


def _pairs(responses: list[ResponsesRecord], results: dict, weights: dict[str, float],
           reference: dict[str, ScoresRecord]) -> list[PairRecord]:
    """One pair per kept prompt, in response order: its chosen and rejected responses, its
    weight, and the reference model's log-probs and lengths of both (what dpo reads)."""
    pairs = []
    for row in responses:
        res = results[row.prompt_id]
        if not res.kept:
            continue
        c, rj = res.chosen_index, res.rejected_index
        ref = reference[row.prompt_id]
        pairs.append(PairRecord(
            prompt_id=row.prompt_id, prompt=row.prompt,
            chosen=row.responses[c], rejected=row.responses[rj],
            chosen_index=c, rejected_index=rj, weight=weights[row.prompt_id],
            ref_chosen_logp=ref.logps[c], ref_rejected_logp=ref.logps[rj],
            ref_chosen_length=ref.lengths[c], ref_rejected_length=ref.lengths[rj],
        ))
    return pairs
