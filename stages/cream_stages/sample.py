"""Stage `sample`: M_t writes n responses to each prompt of the iteration's prompt set.

The user turn is the prompt, with the model's chat template and generation prompt. transformers
on the CPU (batched, left padding; deterministic given seed and batch size) or vLLM on a GPU
(per-prompt seeds derived from the seed and the prompt id).
"""

from __future__ import annotations

import logging

from . import artifacts
from .contract import RESPONSES_FILE, SampleRequest
from .data import load_prompts
from .runner import StageResult

log = logging.getLogger(__name__)


def run(req: SampleRequest) -> StageResult:
    prompts = load_prompts(req.prompts, req.max_prompts)
    log.info("sampling %d responses for each of %d prompts", req.n, len(prompts))
    texts = [p.text for p in prompts]
    if req.backend == "vllm":
        from . import vllm_backend  # noqa: PLC0415
        from .models import load_tokenizer, resolve_model_uri  # noqa: PLC0415
        from .tokenization import prompt_text  # noqa: PLC0415

        path = resolve_model_uri(req.model)
        tokenizer = load_tokenizer(path)
        ids = [tokenizer(prompt_text(tokenizer, t), add_special_tokens=False)["input_ids"]
               for t in texts]
        responses = vllm_backend.generate(
            path, ids, [p.id for p in prompts], precision=req.precision, seed=req.seed,
            sample=True, n=req.n, temperature=req.temperature, top_p=req.top_p,
            max_tokens=req.max_tokens)
    else:
        from .generation import generate  # noqa: PLC0415
        from .models import load_model  # noqa: PLC0415

        model, tokenizer, _ = load_model(req.model, req.precision)
        responses = generate(model, tokenizer, texts, n=req.n, sample=True,
                             temperature=req.temperature, top_p=req.top_p,
                             max_tokens=req.max_tokens, batch_size=req.batch_size, seed=req.seed,
                             desc="sample")
    rows = [{"prompt_id": p.id, "prompt": p.text, "responses": r}
            for p, r in zip(prompts, responses, strict=True)]
    artifacts.write_jsonl(artifacts.join(req.output, RESPONSES_FILE), rows)
    return StageResult(
        inputs={"model": req.model, "prompts": req.prompts},
        outputs={"responses": RESPONSES_FILE},
        metrics={"prompts": len(rows), "responses": sum(len(r["responses"]) for r in rows)},
    )
