"""Stage `score`: s_M(x, y) for every sampled response, by one model M.

s_M(x, y) = sum of log p_M over the response tokens of y (prompt tokens masked), the chat
template applied to [user: x, assistant: y]; the response tokens include the template's
end-of-turn token, so a model's wish to stop counts too. `lengths` is |y|, the number of tokens
summed (what consistency divides by at t = 1). Tokenisation and truncation are tokenization.py's,
the same dpo uses, so these log-probs serve as dpo's reference.
"""

from __future__ import annotations

import logging

from .artifacts import join
from .contract import SCORES_FILE, ScoreRequest, StageInputError, StageResult
from .records import ResponsesRecord, ScoresRecord, read, write

log = logging.getLogger(__name__)


def run(req: ScoreRequest) -> StageResult | None:
    from .engine_pool import engines_for  # noqa: PLC0415 - torch only once the request is valid
    from .tokenization import encode_pair  # noqa: PLC0415

    rows = read(req.responses, ResponsesRecord)
    if not rows:
        raise StageInputError(f"{req.responses}: no responses to score")
    with engines_for(req) as engines:
        encodings = []
        for row in rows:
            for j, response in enumerate(row.responses):
                enc = encode_pair(engines.tokenizer, row.prompt, response, req.max_length)
                if enc.n_targets == 0:
                    raise StageInputError(f"{req.responses}: prompt_id {row.prompt_id}: "
                                          f"response {j} has no tokens to score within "
                                          f"max_length {req.max_length}")
                encodings.append(enc)
        truncated = sum(e.truncated for e in encodings)
        if truncated:
            log.warning("%d of %d sequences were truncated to max_length %d", truncated,
                        len(encodings), req.max_length)
        log.info("scoring %d responses with M%d (%s)", len(encodings), req.model_index,
                 req.model)
        logps = engines.score(encodings, max_length=req.max_length, batch_size=req.batch_size,
                              desc=f"score M{req.model_index}")
    if logps is None:  # another node's share: in its shard; node 0 merges and commits
        return None
    out, k = [], 0
    for row in rows:
        n = len(row.responses)
        out.append(ScoresRecord(prompt_id=row.prompt_id, logps=logps[k:k + n],
                                lengths=[e.n_targets for e in encodings[k:k + n]],
                                responses_digest=row.digest()))
        k += n
    write(join(req.output, SCORES_FILE), out)
    return StageResult(
        inputs={"model": req.model, "responses": req.responses},
        outputs={"scores": SCORES_FILE},
        metrics={"responses": len(encodings), "model_index": req.model_index,
                 **engines.shard_metrics()},
    )
