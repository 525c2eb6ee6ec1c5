"""Stage `sample`: M_t writes n responses to each prompt of the iteration's prompt set.

The user turn is the prompt, with the model's chat template and generation prompt; the engines
(inference.py) are the request's backend, `data_parallel` of them, on each of `nodes` Pods.
"""

from __future__ import annotations

import logging

from .artifacts import join
from .contract import RESPONSES_FILE, SampleRequest, StageResult
from .data import load_prompts
from .records import ResponsesRecord, write

log = logging.getLogger(__name__)


def run(req: SampleRequest) -> StageResult | None:
    from .engine_pool import engines_for  # noqa: PLC0415 - torch only once the request is valid

    prompts = load_prompts(req.prompts, req.max_prompts)
    log.info("sampling %d responses for each of %d prompts", req.n, len(prompts))
    with engines_for(req) as engines:
        responses = engines.generate([p.text for p in prompts], [p.id for p in prompts], n=req.n,
                                     sample=True, temperature=req.temperature, top_p=req.top_p,
                                     max_tokens=req.max_tokens, batch_size=req.batch_size,
                                     desc="sample")
    if responses is None:  # another node's share: in its shard; node 0 merges and commits
        return None
    rows = [ResponsesRecord(prompt_id=p.id, prompt=p.text, responses=r)
            for p, r in zip(prompts, responses, strict=True)]
    write(join(req.output, RESPONSES_FILE), rows)
    return StageResult(
        inputs={"model": req.model, "prompts": req.prompts},
        outputs={"responses": RESPONSES_FILE},
        metrics={"prompts": len(rows), "responses": sum(len(r.responses) for r in rows),
                 **engines.shard_metrics()},
    )
