"""The stage contract: what a stage is asked to do, and the manifest it leaves when done.

Every stage is `python -m cream_stages <stage> --request <uri>`. The request names the stage's
input URIs, its output URI (a directory) and its parameters. A stage writes its outputs, then last
`<output>/manifest.json`: the manifest is the commit point, so a stage whose manifest exists is
done and running it again is a no-op.

This module is imported by the operator, whose image has no torch: keep it free of ML imports.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# Names of the files a stage leaves in its output directory (besides the manifest).
RESPONSES_FILE = "responses.jsonl"  # sample
SCORES_FILE = "scores.jsonl"  # score
PAIRS_FILE = "pairs.jsonl"  # consistency
PER_PROMPT_FILE = "consistency.jsonl"  # consistency
PREDICTIONS_FILE = "predictions.jsonl"  # evaluate

StageName = Literal["sft", "sample", "score", "consistency", "dpo", "evaluate"]
STAGES: tuple[str, ...] = ("sft", "sample", "score", "consistency", "dpo", "evaluate")

InferenceBackend = Literal["transformers", "vllm"]
TrainBackend = Literal["transformers", "deepspeed"]
RankMethod = Literal["kendall", "spearman", "toporder"]
Strategy = Literal["avg", "dynamic", "none"]
TaskFormat = Literal["multiple_choice", "gsm8k"]
Precision = Literal["float32", "bfloat16", "float16"]

PositiveInt = Annotated[int, Field(ge=1)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    output: str = Field(description="URI of the directory the stage writes, manifest last")
    seed: int = 0


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: PositiveInt
    learning_rate: float = Field(gt=0)
    batch_size: PositiveInt
    gradient_accumulation: PositiveInt = 1
    max_length: PositiveInt = 2048
    backend: TrainBackend = "transformers"
    zero_stage: Literal[2, 3] = 2
    precision: Precision = "float32"


class SftRequest(_Request):
    stage: Literal["sft"] = "sft"
    model: str = Field(description="M0: base model URI")
    data: str = Field(description="SFT chat data (JSON or JSONL)")
    train: TrainParams


class SampleRequest(_Request):
    stage: Literal["sample"] = "sample"
    model: str
    prompts: str = Field(description="prompt set keyed by id (JSON or JSONL)")
    n: int = Field(default=5, ge=2)
    temperature: float = Field(default=0.8, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: PositiveInt = 768
    max_prompts: int | None = Field(default=None, ge=1)
    batch_size: PositiveInt = 8
    backend: InferenceBackend = "transformers"
    precision: Precision = "float32"


class ScoreRequest(_Request):
    stage: Literal["score"] = "score"
    model: str
    model_index: int = Field(ge=0, description="k of M_k, for the record")
    responses: str = Field(description="the sample stage's responses.jsonl")
    max_length: PositiveInt = 2048
    batch_size: PositiveInt = 8
    backend: InferenceBackend = "transformers"
    precision: Precision = "float32"


class ConsistencyRequest(_Request):
    stage: Literal["consistency"] = "consistency"
    iteration: PositiveInt
    responses: str
    current: str = Field(description="scores.jsonl of M_t (also the DPO reference log-probs)")
    previous: str = Field(description="scores.jsonl of M_{t-1}")
    previous2: str | None = Field(
        default=None,
        description="scores.jsonl of M_{t-2}; absent at t = 1, where r_{t-1} = s_{M0} / |y|",
    )
    method: RankMethod = "kendall"
    strategy: Strategy = "avg"


class DpoRequest(_Request):
    stage: Literal["dpo"] = "dpo"
    model: str = Field(description="M_t: the policy's start and the (implicit) reference")
    pairs: str = Field(description="the consistency stage's pairs.jsonl")
    beta: float = Field(default=0.1, gt=0)
    train: TrainParams


class EvalTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    uri: str
    format: TaskFormat
    limit: int | None = Field(default=None, ge=1)


class EvaluateRequest(_Request):
    stage: Literal["evaluate"] = "evaluate"
    model: str
    tasks: list[EvalTask] = Field(min_length=1)
    max_tokens: PositiveInt = 512
    batch_size: PositiveInt = 8
    backend: InferenceBackend = "transformers"
    precision: Precision = "float32"


StageRequest = Annotated[
    SftRequest | SampleRequest | ScoreRequest | ConsistencyRequest | DpoRequest | EvaluateRequest,
    Field(discriminator="stage"),
]


class _RequestEnvelope(BaseModel):
    request: StageRequest


def parse_request(data: dict) -> SftRequest | SampleRequest | ScoreRequest | ConsistencyRequest \
        | DpoRequest | EvaluateRequest:
    """Validate a request dict into its stage's model (raises pydantic.ValidationError)."""
    return _RequestEnvelope.model_validate({"request": data}).request


class Timings(BaseModel):
    started: str
    finished: str
    seconds: float


class Manifest(BaseModel):
    """Written last by every stage; its presence means the stage's outputs are complete."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    stage: StageName
    request: dict
    inputs: dict[str, str | None]
    outputs: dict[str, str] = Field(description="name -> file name relative to the output dir")
    metrics: dict = Field(default_factory=dict)
    timings: Timings
