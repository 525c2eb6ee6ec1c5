"""Stage `score`: s_M(x, y) for every sampled response, by one model M.

s_M(x, y) = sum of log p_M over the response tokens of y (prompt tokens masked), the chat
template applied to [user: x, assistant: y]; the response tokens include the template's
end-of-turn token, so a model's wish to stop counts too. `lengths` is |y|, the number of tokens
summed (what consistency divides by at t = 1). Tokenisation and truncation are tokenization.py's,
the same dpo uses, so these log-probs serve as dpo's reference.
"""

from __future__ import annotations

import logging

from . import artifacts
from .contract import SCORES_FILE, ScoreRequest
from .data import load_responses
from .errors import StageInputError
from .runner import StageResult

log = logging.getLogger(__name__)


def run(req: ScoreRequest) -> StageResult:
    from .models import load_model, load_tokenizer, resolve_model_uri  # noqa: PLC0415
    from .tokenization import encode_pair  # noqa: PLC0415

    rows = load_responses(req.responses)
    if not rows:
        raise StageInputError(f"{req.responses}: no responses to score")
    if req.backend == "vllm":
        model, path = None, resolve_model_uri(req.model)
        tokenizer = load_tokenizer(path)
    else:
        model, tokenizer, path = load_model(req.model, req.precision)
    encodings = []
    for row in rows:
        for j, response in enumerate(row.responses):
            enc = encode_pair(tokenizer, row.prompt, response, req.max_length)
            if enc.n_targets == 0:
                raise StageInputError(f"{req.responses}: prompt_id {row.prompt_id}: response "
                                      f"{j} has no tokens to score within max_length "
                                      f"{req.max_length}")
            encodings.append(enc)
    truncated = sum(e.truncated for e in encodings)
    if truncated:
        log.warning("%d of %d sequences were truncated to max_length %d", truncated,
                    len(encodings), req.max_length)
    log.info("scoring %d responses with M%d (%s)", len(encodings), req.model_index, req.model)
    if req.backend == "vllm":
        from . import vllm_backend  # noqa: PLC0415

        logps = vllm_backend.score(path, encodings, precision=req.precision, seed=req.seed,
                                   max_length=req.max_length, batch_size=req.batch_size)
    else:
        from .logprobs import score_encodings  # noqa: PLC0415

        logps = score_encodings(model, encodings, tokenizer.pad_token_id, req.batch_size,
                                model.device, desc=f"score M{req.model_index}")
    out, k = [], 0
    for row in rows:
        n = len(row.responses)
        out.append({"prompt_id": row.prompt_id, "logps": logps[k:k + n],
                    "lengths": [e.n_targets for e in encodings[k:k + n]]})
        k += n
    artifacts.write_jsonl(artifacts.join(req.output, SCORES_FILE), out)
    return StageResult(
        inputs={"model": req.model, "responses": req.responses},
        outputs={"scores": SCORES_FILE},
        metrics={"responses": len(encodings), "model_index": req.model_index},
    )
