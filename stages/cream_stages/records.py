"""The files stages hand to each other, each record defined once: its writer and its reader share
the model, so a field cannot be written under one name and read under another.

responses.jsonl (sample -> score, consistency), scores.jsonl (score -> consistency),
judgements.jsonl (judge -> consistency), rewards.jsonl (reward -> consistency),
pairs.jsonl and consistency.jsonl (consistency -> dpo), predictions.jsonl (evaluate),
train_log.jsonl (sft, dpo: the loss curve, for people and for comparing backends). The user's
own input formats (prompt sets, SFT data, evaluation sets) are data.py's and eval_tasks.py's.

Reading validates every record and fails with the file, the record and the field; numbers must be
finite (a NaN log-prob would silently poison a ranking). A score record carries the digest of the
prompt and responses it scored, so a score file is bound to its responses file: one made from
another sample is refused even when its prompt ids and counts match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import artifacts
from .contract import StageInputError
from .data import read_records, where

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ResponsesRecord(_Record):
    """One prompt and the n responses sampled for it (sample's output)."""

    prompt_id: str
    prompt: str
    responses: list[str] = Field(min_length=1)

    def digest(self) -> str:
        return responses_digest(self.prompt, self.responses)


def responses_digest(prompt: str, responses: list[str]) -> str:
    """sha256 (hex) of one prompt and its responses in order: what a score record scored."""
    canonical = json.dumps([prompt, responses], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ScoresRecord(_Record):
    """s_M of each response of one prompt, in the responses' order (score's output)."""

    prompt_id: str
    logps: list[FiniteFloat]
    lengths: list[PositiveInt] = Field(description="|y|: the response tokens summed")
    responses_digest: Sha256 = Field(
        description="responses_digest(prompt, responses) of the responses record scored")

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.logps) != len(self.lengths):
            raise ValueError(f"'logps' has {len(self.logps)} values but 'lengths' has "
                             f"{len(self.lengths)}")
        return self


class JudgementsRecord(_Record):
    """One prompt's responses as judged by one model (judge's): per response its mean score
    (None when no judgement parsed), how many of its K judgements parsed, and their texts."""

    prompt_id: str
    scores: list[FiniteFloat | None]
    parsed: list[int]
    judgements: list[list[str]]
    responses_digest: Sha256


class RewardsRecord(_Record):
    """One prompt's responses as scored by an external reward model (reward's): per response its
    scalar reward and, for a CLoud reward model, the critique it wrote first (else empty)."""

    prompt_id: str
    rewards: list[FiniteFloat] = Field(min_length=1)
    critiques: list[str]
    responses_digest: Sha256

    @model_validator(mode="after")
    def _critique_per_response(self):
        if self.critiques and len(self.critiques) != len(self.rewards):
            raise ValueError(f"{len(self.critiques)} critiques for {len(self.rewards)} rewards")
        return self


class PairRecord(_Record):
    """One DPO preference pair with its weight C and M_t's reference log-probs (consistency's)."""

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_index: int = Field(ge=0)
    rejected_index: int = Field(ge=0)
    weight: float = Field(ge=0.0, le=1.0)
    ref_chosen_logp: FiniteFloat
    ref_rejected_logp: FiniteFloat
    # How many tokens score summed: dpo re-tokenises and checks it counts the same.
    ref_chosen_length: PositiveInt
    ref_rejected_length: PositiveInt


class ConsistencyRecord(_Record):
    """One prompt's rank agreement (the statistic under its own name) and C (consistency's)."""

    prompt_id: str
    kept: bool
    c: float | None = Field(default=None, ge=0.0, le=1.0)
    tau: float | None = None
    rho: float | None = None
    top_order: float | None = None


class PredictionRecord(_Record):
    """One evaluation item: what the model wrote and what was read from it (evaluate's)."""

    task: str
    id: str
    prediction: str | None
    answer: str
    correct: bool
    output: str


class TrainStepRecord(_Record):
    """One optimizer step of sft or dpo: its loss, the mean over its micro-batches and ranks."""

    step: PositiveInt
    epoch: int = Field(ge=0)
    loss: FiniteFloat


R = TypeVar("R", bound=_Record)


def _problem(err: dict) -> str:
    """One pydantic error as "field 'logps' (item 2): ..." or "missing field 'weight'"."""
    loc = err["loc"]
    if err["type"] == "missing":
        return f"missing field '{loc[0]}'"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    items = "".join(f" (item {p + 1})" if isinstance(p, int) else f".{p}" for p in loc[1:])
    return f"field '{loc[0]}'{items}: {msg}"


def read(uri: str, model: type[R], key: str | None = "prompt_id") -> list[R]:
    """Every record of a stage file, validated; `key` must be unique when given."""
    out: list[R] = []
    seen: set[str] = set()
    for i, rec in enumerate(read_records(uri)):
        try:
            record = model.model_validate(rec)
        except ValidationError as exc:
            problems = "; ".join(_problem(e) for e in exc.errors())
            raise StageInputError(f"{where(uri, i, rec)}: {problems}") from None
        if key is not None:
            value = getattr(record, key)
            if value in seen:
                raise StageInputError(f"{uri}: record {i + 1}: duplicate {key} {value}")
            seen.add(value)
        out.append(record)
    return out


def write(uri: str, records: Iterable[_Record]) -> None:
    """One JSON object per line, atomically; fields left at their defaults are left out."""
    artifacts.write_jsonl(uri, (r.model_dump(mode="json", exclude_unset=True) for r in records))


def check_scores_match(responses_uri: str, responses: list[ResponsesRecord], scores_uri: str,
                       scores: dict[str, ScoresRecord]) -> None:
    """The score file covers exactly the responses' prompts, one score per response, and scored
    these very responses (its digests match)."""
    ids = [r.prompt_id for r in responses]
    missing = [pid for pid in ids if pid not in scores]
    extra = sorted(set(scores) - set(ids))
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"no scores for prompt_id {', '.join(missing[:5])}")
        if extra:
            detail.append(f"scores for prompt_id {', '.join(extra[:5])} not in {responses_uri}")
        raise StageInputError(f"{scores_uri}: does not match {responses_uri}: {'; '.join(detail)}")
    for r in responses:
        if len(scores[r.prompt_id].logps) != len(r.responses):
            raise StageInputError(
                f"{scores_uri}: prompt_id {r.prompt_id}: field 'logps' has "
                f"{len(scores[r.prompt_id].logps)} values but {responses_uri} has "
                f"{len(r.responses)} responses"
            )
        if scores[r.prompt_id].responses_digest != r.digest():
            raise StageInputError(
                f"{scores_uri}: prompt_id {r.prompt_id}: field 'responses_digest' does not match "
                f"{responses_uri}: these scores were computed on other responses (another "
                "sample); score this responses file again"
            )
