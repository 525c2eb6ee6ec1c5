"""Stage `judge`: M_k grades each sampled response K times (LLM-as-a-Judge, SRLM).

Each judgement is the model's answer to the judge template filled with the prompt and the
response, as a user turn; its score is the pattern's first group where it is a number in
[min_score, max_score] (judge_prompt.py). The response's score is the mean of its parseable
judgements. Unparseable judgements are counted and exported, never scored 0; a judge none of whose
judgements parse fails the stage with a message saying so (exit 2: the same request fails the
same way on a retry).
"""

from __future__ import annotations

import logging
from collections import Counter

from . import judge_prompt as jp
from .artifacts import join
from .contract import JUDGEMENTS_FILE, JudgeRequest, StageInputError, StageResult
from .records import JudgementsRecord, ResponsesRecord, read, write

log = logging.getLogger(__name__)


def run(req: JudgeRequest) -> StageResult | None:
    from .engine_pool import engines_for  # noqa: PLC0415 - torch only once the request is valid

    rows = read(req.responses, ResponsesRecord)
    if not rows:
        raise StageInputError(f"{req.responses}: no responses to judge")
    prompts, keys = [], []
    for row in rows:
        for j, response in enumerate(row.responses):
            prompts.append(jp.judge_prompt(req.template, row.prompt, response))
            keys.append(f"{row.prompt_id}/{j}")
    log.info("M%d judges %d responses, %d times each", req.model_index, len(prompts),
             req.judgements)
    with engines_for(req) as engines:
        texts = engines.generate(prompts, keys, n=req.judgements, sample=True,
                                 temperature=req.temperature, top_p=req.top_p,
                                 max_tokens=req.max_tokens, batch_size=req.batch_size,
                                 desc=f"judge M{req.model_index}")
    if texts is None:  # another node's share: in its shard; node 0 merges and commits
        return None
    out, k, histogram = [], 0, Counter()
    for row in rows:
        n = len(row.responses)
        mine = texts[k:k + n]
        k += n
        parsed = [[jp.parse_score(t, req.pattern, req.min_score, req.max_score) for t in ts]
                  for ts in mine]
        histogram.update(str(v) for ps in parsed for v in ps if v is not None)
        out.append(JudgementsRecord(
            prompt_id=row.prompt_id, scores=[jp.mean_score(ps) for ps in parsed],
            parsed=[sum(v is not None for v in ps) for ps in parsed], judgements=mine,
            responses_digest=row.digest()))
    total = len(prompts) * req.judgements
    ok = sum(histogram.values())
    if ok == 0:
        raise StageInputError(
            f"the judge M{req.model_index} never returned a parseable score: 0 of {total} "
            f"judgements matched pattern {req.pattern!r} with a number in [{req.min_score}, "
            f"{req.max_score}]; check the judge's template and pattern (or the model)")
    write(join(req.output, JUDGEMENTS_FILE), out)
    scored = [s for r in out for s in r.scores if s is not None]
    return StageResult(
        inputs={"model": req.model, "responses": req.responses},
        outputs={"judgements": JUDGEMENTS_FILE},
        metrics={"model_index": req.model_index, "judgements": total, "parsed": ok,
                 "parse_failures": total - ok, "parse_rate": ok / total,
                 "unscored_responses": sum(s is None for r in out for s in r.scores),
                 "score_mean": sum(scored) / len(scored),
                 # Parsed judgement scores by value: the judge's score distribution.
                 "score_histogram": dict(sorted(histogram.items(),
                                                key=lambda kv: float(kv[0]))),
                 **engines.shard_metrics()},
    )
