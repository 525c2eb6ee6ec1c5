"""The CreamRun resource as pydantic models: the single source of truth.

The CRD in crds/ is generated from these models (see crd.py) and a test fails when it drifts. Field
names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from cream_stages.contract import (
    InferenceBackend,
    Precision,
    RankMethod,
    Strategy,
    TaskFormat,
    TrainBackend,
)

GROUP = "cream.dev"
VERSION = "v1alpha1"
KIND = "CreamRun"
PLURAL = "creamruns"
SINGULAR = "creamrun"
SHORT_NAMES = ["cream"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ModelSpec(_Model):
    """Where M0 comes from, and optionally an already fine-tuned M1."""

    base: str = Field(
        min_length=1,
        description="M0: hf://org/name, s3://bucket/prefix, a local directory, or "
        "builtin://tiny-llama (a tiny random model for smoke tests)",
    )
    sft: str | None = Field(
        default=None,
        description="An already fine-tuned M1; when set the sft stage is skipped",
    )
    max_length: int = Field(
        default=2048, ge=16, le=131072,
        description="Token budget of prompt plus response for scoring and training",
    )
    precision: Precision = Field(default="bfloat16", description="Weights' dtype on GPUs")


class EvalTaskSpec(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", max_length=40)]
    uri: str = Field(min_length=1)
    format: TaskFormat
    limit: int | None = Field(default=None, ge=1, description="Evaluate the first N items")


class DataSpec(_Model):
    sft: str | None = Field(
        default=None, description="SFT chat data (JSON/JSONL); required unless model.sft is set"
    )
    prompts: list[str] = Field(
        min_length=1,
        description="Prompt set per iteration (t = 1..T); a single set is reused every iteration",
    )
    max_prompts: int | None = Field(default=None, ge=1, description="Use the first N prompts")


class SamplingSpec(_Model):
    # Not `n`: Kubernetes reads YAML 1.1, where a key `n` is the boolean false.
    responses_per_prompt: int = Field(
        default=5, ge=2, le=64, description="N, the answers sampled per prompt")
    temperature: float = Field(default=0.8, gt=0, le=5)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=768, ge=1, le=32768)
    backend: InferenceBackend = "vllm"
    batch_size: int = Field(default=64, ge=1)


class ScoringSpec(_Model):
    backend: InferenceBackend = Field(
        default="vllm",
        description="Every score of an iteration comes from this one backend and precision",
    )
    batch_size: int = Field(default=16, ge=1)


class ConsistencySpec(_Model):
    method: RankMethod = "kendall"
    strategy: Strategy = Field(
        default="avg",
        description="avg: every pair gets the mean consistency; dynamic: each pair its own; "
        "none: plain self-rewarding (C = 1)",
    )


class TrainSpec(_Model):
    epochs: int = Field(ge=1, le=100)
    learning_rate: float = Field(gt=0, lt=1)
    batch_size: int = Field(ge=1, le=4096)
    gradient_accumulation: int = Field(default=1, ge=1, le=1024)
    backend: TrainBackend = "deepspeed"
    zero_stage: Literal[2, 3] = 3


class SftSpec(TrainSpec):
    epochs: int = Field(default=5, ge=1, le=100)
    learning_rate: float = Field(default=5e-6, gt=0, lt=1)
    batch_size: int = Field(default=4, ge=1, le=4096)


class DpoSpec(TrainSpec):
    epochs: int = Field(default=1, ge=1, le=100)
    learning_rate: float = Field(default=1e-6, gt=0, lt=1)
    batch_size: int = Field(default=4, ge=1, le=4096)
    beta: float = Field(default=0.1, gt=0, le=10)


class EvaluationSpec(_Model):
    tasks: list[EvalTaskSpec] = Field(default_factory=list)
    max_tokens: int = Field(default=512, ge=1, le=32768)
    backend: InferenceBackend = "vllm"
    batch_size: int = Field(default=64, ge=1)
    baseline: bool = Field(default=True, description="Also evaluate M1, as iteration 0")

    @model_validator(mode="after")
    def _unique_names(self):
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique; repeated: {', '.join(dup)}")
        return self


class StorageSpec(_Model):
    uri: str = Field(
        default="",
        description="Artifact root, s3://bucket/prefix; empty uses the operator's default",
    )
    secret_name: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally "
        "AWS_ENDPOINT_URL, AWS_REGION; empty uses the operator's default",
    )


class StageResources(_Model):
    gpus: int | None = Field(default=None, ge=0, le=64, description="nvidia.com/gpu per Pod")
    cpu: Annotated[str, Field(pattern=QUANTITY)] | None = None
    memory: Annotated[str, Field(pattern=QUANTITY)] | None = None
    nodes: int | None = Field(
        default=None, ge=1, le=64,
        description="Pods for sft/dpo (an Indexed Job with torchrun rendezvous); 1 elsewhere",
    )
    image: str | None = Field(default=None, description="Overrides the operator's stage image")


class ResourcesSpec(_Model):
    sft: StageResources = Field(default_factory=StageResources)
    sample: StageResources = Field(default_factory=StageResources)
    score: StageResources = Field(default_factory=StageResources)
    consistency: StageResources = Field(default_factory=StageResources)
    dpo: StageResources = Field(default_factory=StageResources)
    evaluate: StageResources = Field(default_factory=StageResources)


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class SchedulingSpec(_Model):
    image: str | None = Field(default=None, description="Stage image for every stage")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class_name: str | None = None
    service_account_name: str | None = None
    queue_name: str | None = Field(
        default=None, description="Kueue LocalQueue: Jobs are created suspended for admission"
    )
    backoff_limit: int = Field(default=2, ge=0, le=20, description="Retries of a failed stage")
    active_deadline_seconds: int | None = Field(default=None, ge=60)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)


class CreamRunSpec(_Model):
    """What a user asks for: T iterations of CREAM from a base model."""

    model: ModelSpec
    data: DataSpec
    iterations: int = Field(default=3, ge=1, le=20)
    seed: int = Field(default=42, ge=0)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    scoring: ScoringSpec = Field(default_factory=ScoringSpec)
    consistency: ConsistencySpec = Field(default_factory=ConsistencySpec)
    sft: SftSpec = Field(default_factory=SftSpec)
    dpo: DpoSpec = Field(default_factory=DpoSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    suspend: bool = Field(default=False, description="Pause before the next stage")
    cleanup_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", description="Delete removes the run's artifacts with the CreamRun"
    )

    @model_validator(mode="after")
    def _cross_field(self):
        if self.model.sft is None and self.data.sft is None:
            raise ValueError(
                "data.sft is required to train M1 from model.base; or set model.sft to an "
                "already fine-tuned model"
            )
        n_sets = len(self.data.prompts)
        if 1 < n_sets < self.iterations:
            raise ValueError(
                f"data.prompts has {n_sets} prompt sets for {self.iterations} iterations: give one "
                "set (reused every iteration) or at least one per iteration"
            )
        return self


# --- status -------------------------------------------------------------------------------------

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class IterationResult(_Model):
    iteration: int = Field(ge=0, description="0 is the SFT baseline (M1)")
    consistency_rate: float | None = None
    pairs: int | None = None
    dropped: int | None = None
    accuracy: dict[str, float] = Field(default_factory=dict)
    model_uri: str | None = None


StepPhase = Literal["Running", "Succeeded", "Failed"]


class StepMetrics(_Model):
    """The parts of a stage's manifest metrics that the run's results are made of."""

    consistency_rate: float | None = None
    pairs: int | None = None
    dropped: int | None = None
    accuracy: dict[str, float] = Field(default_factory=dict)


class StepStatus(_Model):
    """One started stage: its Job, its outcome and its metrics (kept after the Job is gone)."""

    key: str
    stage: str
    iteration: int
    phase: StepPhase
    job: str
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = None
    metrics: StepMetrics | None = None


class CreamRunStatus(_Model):
    phase: Phase | None = None
    iteration: int | None = None
    stage: str | None = None
    consistency_rate: float | None = Field(default=None, description="Of the latest iteration")
    message: str | None = None
    artifacts: str | None = Field(default=None, description="The run's artifact root")
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    results: list[IterationResult] = Field(default_factory=list)
    steps: list[StepStatus] = Field(default_factory=list)


class CreamRun(_Model):
    """The whole object, as `cream validate` reads it from a file."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    api_version: Literal["cream.dev/v1alpha1"]
    kind: Literal["CreamRun"]
    metadata: dict
    spec: CreamRunSpec

    @field_validator("metadata")
    @classmethod
    def _metadata_name(cls, metadata: dict) -> dict:
        name = metadata.get("name")
        if not isinstance(name, str) or not re.match(DNS_LABEL, name) or len(name) > 63:
            raise ValueError(
                "name must be a DNS label: lowercase letters, digits and '-', at most 63 "
                "characters"
            )
        return metadata


# --- problems, as users read them -----------------------------------------------------------

def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(object)"


def problems_of(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        # Drop pydantic's "Value error, " prefix: the message is already ours.
        msg = err["msg"].removeprefix("Value error, ")
        loc = field_path(err["loc"])
        if err["type"] not in ("value_error", "missing", "extra_forbidden") and "input" in err \
                and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against `cream crd` or the README"
        problems.append(f"{loc}: {msg}")
    return problems
