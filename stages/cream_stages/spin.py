"""Stage `spin`: one SPIN iteration's pairs (Chen et al. 2024, self-play fine-tuning).

M_t answers each SFT prompt once; the pair is chosen = the data's reference answer, rejected =
M_t's own answer, and M_t's log-probs of both are the reference of the `dpo` stage that follows.
SPIN's loss, -log sigmoid(lambda * ((s_theta(c) - s_t(c)) - (s_theta(r) - s_t(r)))), is that
stage's loss with beta = lambda and every weight 1 (losses.spin_loss), so SPIN trains with the
same code, tokenisation and checks as CREAM. A prompt whose own answer equals the reference gives
no signal (the two terms cancel): it is dropped and counted.
"""

from __future__ import annotations

import logging

from .artifacts import join
from .contract import PAIRS_FILE, SpinRequest, StageInputError, StageResult
from .data import load_conversations
from .records import PairRecord, write

log = logging.getLogger(__name__)


def reference_pairs(uri: str, limit: int | None) -> list[tuple[str, str]]:
    """(prompt, reference answer) of each single-turn SFT example, in file order."""
    out = []
    for i, msgs in enumerate(load_conversations(uri)):
        roles = [m["role"] for m in msgs]
        if roles != ["user", "assistant"]:
            raise StageInputError(f"{uri}: example {i + 1}: SPIN takes single-turn examples "
                                  f"(one user, one assistant message), found {roles}")
        out.append((msgs[0]["content"], msgs[1]["content"]))
    return out[:limit] if limit else out


def run(req: SpinRequest) -> StageResult:
    from .engine_pool import open_engines  # noqa: PLC0415 - torch only once the request is valid
    from .tokenization import encode_pair  # noqa: PLC0415

    examples = reference_pairs(req.data, req.max_examples)
    ids = [f"spin-{i}" for i in range(len(examples))]
    with open_engines(req.backend, req.model, req.precision, req.seed, 1, 1, None) as engines:
        own = engines.generate([p for p, _ in examples], ids, n=1, sample=True,
                               temperature=req.temperature, top_p=req.top_p,
                               max_tokens=req.max_tokens, batch_size=req.batch_size,
                               desc="spin generate")
        kept = [(pid, p, ref, mine[0]) for pid, (p, ref), mine in zip(ids, examples, own,
                                                                       strict=True)
                if mine[0] != ref]
        encodings = []
        for pid, prompt, ref, mine in kept:
            for name, text in (("reference", ref), ("own", mine)):
                enc = encode_pair(engines.tokenizer, prompt, text, req.max_length)
                if enc.n_targets == 0:
                    raise StageInputError(f"{req.data}: {pid}: the {name} answer has no tokens "
                                          f"within max_length {req.max_length}")
                encodings.append(enc)
        logps = engines.score(encodings, max_length=req.max_length, batch_size=req.batch_size,
                              desc="spin score") if encodings else []
    if not kept:
        raise StageInputError(f"{req.data}: the model's own answer equals the reference answer "
                              "for every prompt: SPIN has no pair to learn from (it has converged)")
    pairs = [
        PairRecord(prompt_id=pid, prompt=prompt, chosen=ref, rejected=mine, chosen_index=0,
                   rejected_index=1, weight=1.0, ref_chosen_logp=logps[2 * i],
                   ref_rejected_logp=logps[2 * i + 1],
                   ref_chosen_length=encodings[2 * i].n_targets,
                   ref_rejected_length=encodings[2 * i + 1].n_targets)
        for i, (pid, prompt, ref, mine) in enumerate(kept)
    ]
    dropped = len(examples) - len(pairs)
    if dropped:
        log.info("dropped %d prompt(s) whose own answer equals the reference", dropped)
    write(join(req.output, PAIRS_FILE), pairs)
    return StageResult(
        inputs={"model": req.model, "data": req.data},
        outputs={"pairs": PAIRS_FILE},
        metrics={"pairs": len(pairs), "dropped": dropped, "prompts": len(examples),
                 # The reference's margin over the own answer under M_t: SPIN's starting gap.
                 "ref_margin_mean": sum(logps[2 * i] - logps[2 * i + 1]
                                        for i in range(len(pairs))) / len(pairs)},
    )
