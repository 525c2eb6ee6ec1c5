"""The stage contract, the whole stage API: what a stage is asked, what it returns, how it fails.

Every stage is `python -m cream_stages <stage> --request <uri>`. The request names the stage's
input URIs, its output URI (a directory) and its parameters; its shape is checked here, by the
request models' validators, before any stage code runs. A stage's `run(request)` writes its
outputs and returns a `StageResult`; the runner then writes `<output>/manifest.json` last: the
manifest is the commit point, so a stage whose manifest exists is done and running it again is a
no-op. Bad input raises `StageInputError` (exit code 2, never retried).

`STAGE_TABLE` holds the facts about each stage that other parts act on (which stages train a
model, which want a GPU), so no other module keeps lists of stage names.

This module is imported by the operator, whose image has no torch: keep it free of ML imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .judge_prompt import pattern_problem, template_problem

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# Names of the files a stage leaves in its output directory (besides the manifest); their record
# models are in records.py.
RESPONSES_FILE = "responses.jsonl"  # sample
SCORES_FILE = "scores.jsonl"  # score
PAIRS_FILE = "pairs.jsonl"  # consistency
PER_PROMPT_FILE = "consistency.jsonl"  # consistency
JUDGEMENTS_FILE = "judgements.jsonl"  # judge
REWARDS_FILE = "rewards.jsonl"  # reward
PREDICTIONS_FILE = "predictions.jsonl"  # evaluate
# spin writes pairs.jsonl too (chosen = reference answer, rejected = own generation), for dpo
TRAIN_LOG_FILE = "train_log.jsonl"  # sft, dpo: the loss of every optimizer step, beside the model

StageName = Literal["sft", "sample", "score", "judge", "reward", "consistency", "spin", "dpo",
                    "evaluate"]

InferenceBackend = Literal["transformers", "vllm"]
TrainBackend = Literal["transformers", "deepspeed"]
RankMethod = Literal["kendall", "spearman", "toporder"]
Strategy = Literal["avg", "dynamic", "none"]
Reward = Literal["implicit", "judge", "rewardModel"]
# classic: a sequence-scalar head on a causal LM; cloud: Critique-out-Loud (reward.py).
RewardModelType = Literal["classic", "cloud"]
TaskFormat = Literal["multiple_choice", "gsm8k", "lm_eval"]
Precision = Literal["float32", "bfloat16", "float16"]

PositiveInt = Annotated[int, Field(ge=1)]


class StageInputError(ValueError):
    """A request, data file or model that cannot be used; the message names the file and field.

    The runner reports it in one line and exits 2, which fails the stage's Job at once: the same
    input fails the same way on every retry."""


@dataclass
class StageResult:
    """What a stage returns for its manifest (inputs: name -> URI; outputs: name -> file)."""

    inputs: dict[str, str | None]
    outputs: dict[str, str]
    metrics: dict = field(default_factory=dict)


# --- requests ---------------------------------------------------------------------------------

class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    output: str = Field(description="URI of the directory the stage writes, manifest last")
    seed: int = 0


class _InferenceRequest(_Request):
    """What sample, score and evaluate share: how the work spreads over devices and nodes.
    None of it changes an output byte (engine_pool.py, node_shards.py)."""

    backend: InferenceBackend = "transformers"
    data_parallel: PositiveInt = Field(
        default=1, description="engines per node, each on whole batches: one per GPU (or GPU "
        "group, see tensor_parallel), else CPU processes; outputs are the same for any number "
        "(engine_pool.py)")
    tensor_parallel: PositiveInt = Field(
        default=1, description="GPUs per engine (vLLM's tensor_parallel_size), for a model "
        "larger than one GPU; the node needs data_parallel x tensor_parallel GPUs; vllm only")
    nodes: PositiveInt = Field(
        default=1, description="Pods sharing the stage (an Indexed Job); each learns its index "
        "from JOB_COMPLETION_INDEX, node 0 merges the shards and commits (node_shards.py)")
    shard_wait_seconds: PositiveInt = Field(
        default=1800, description="with nodes > 1: how long node 0 waits for the other shards "
        "after its own (at least twice its own share's time)")

    @model_validator(mode="after")
    def _tensor_parallel_needs_vllm(self):
        if self.tensor_parallel > 1 and self.backend != "vllm":
            raise ValueError(f"field 'tensor_parallel' is {self.tensor_parallel}, which needs "
                             f"backend vllm (backend is {self.backend!r}): the transformers "
                             "backend runs a model on one device; use tensor_parallel 1")
        return self


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


class SampleRequest(_InferenceRequest):
    stage: Literal["sample"] = "sample"
    model: str
    prompts: str = Field(description="prompt set keyed by id (JSON or JSONL)")
    n: int = Field(default=5, ge=2)
    temperature: float = Field(default=0.8, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: PositiveInt = 768
    max_prompts: int | None = Field(default=None, ge=1)
    batch_size: PositiveInt = 8
    precision: Precision = "float32"


class ScoreRequest(_InferenceRequest):
    stage: Literal["score"] = "score"
    model: str
    model_index: int = Field(ge=0, description="k of M_k, for the record")
    responses: str = Field(description="the sample stage's responses.jsonl")
    max_length: PositiveInt = 2048
    batch_size: PositiveInt = 8
    precision: Precision = "float32"


class JudgeRequest(_InferenceRequest):
    """M_k grades every sampled response `judgements` times with a prompt template; the score is
    read from each judgement by a pattern's first group (judge_prompt.py)."""

    stage: Literal["judge"] = "judge"
    model: str
    model_index: int = Field(ge=0, description="k of M_k, for the record")
    responses: str = Field(description="the sample stage's responses.jsonl")
    template: str = Field(description="the judge prompt, with {prompt} and {response}")
    pattern: str = Field(description="regex whose first group is the score")
    judgements: PositiveInt = Field(default=3, description="K judgements per response")
    min_score: float = 0.0
    max_score: float = 5.0
    temperature: float = Field(default=0.8, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: PositiveInt = 256
    batch_size: PositiveInt = 8
    precision: Precision = "float32"

    @model_validator(mode="after")
    def _template_pattern_range(self):
        for name, problem in (("template", template_problem(self.template)),
                              ("pattern", pattern_problem(self.pattern))):
            if problem:
                raise ValueError(f"field '{name}': {problem}")
        if self.min_score > self.max_score:
            raise ValueError(f"field 'min_score' ({self.min_score}) is above 'max_score' "
                             f"({self.max_score})")
        return self


class RewardRequest(_Request):
    """An external reward model scores every sampled response (reward.py): a classic one reads
    [prompt, response]; a CLoud one first writes a critique of the response with its language
    model head, then scores [prompt, response, critique]. Greedy critiques: deterministic."""

    stage: Literal["reward"] = "reward"
    model: str = Field(description="the reward model's URI (any model URI)")
    model_type: RewardModelType = Field(description="classic or cloud")
    responses: str = Field(description="the sample stage's responses.jsonl")
    max_length: PositiveInt = 2048
    critique_tokens: PositiveInt = Field(default=256, description="cloud: longest critique")
    batch_size: PositiveInt = 8
    precision: Precision = "float32"


class ConsistencyRequest(_Request):
    stage: Literal["consistency"] = "consistency"
    iteration: PositiveInt
    responses: str
    current: str = Field(description="scores.jsonl of M_t (also the DPO reference log-probs)")
    previous: str | None = Field(default=None, description="scores.jsonl of M_{t-1} (implicit)")
    reward: Reward = "implicit"
    judgements: str | None = Field(default=None,
                                   description="judge: judgements.jsonl of M_t, the rewards")
    previous_judgements: str | None = Field(
        default=None, description="judge: judgements.jsonl of M_{t-1} on the same responses, "
        "for consistency regularisation; absent: plain SRLM weights (1)")
    rewards: str | None = Field(default=None,
                                description="rewardModel: rewards.jsonl, the reward model's")
    previous2: str | None = Field(
        default=None,
        description="scores.jsonl of M_{t-2}; absent at t = 1, where r_{t-1} = s_{M0} / |y|",
    )
    method: RankMethod = "kendall"
    strategy: Strategy = "avg"

    @model_validator(mode="after")
    def _previous2_iff_iteration_two_or_more(self):
        if (self.rewards is not None) != (self.reward == "rewardModel"):
            raise ValueError("field 'rewards' (the reward model's rewards.jsonl) is required "
                             "with reward rewardModel, and only there")
        if self.reward != "implicit" and (self.previous is not None
                                          or self.previous2 is not None):
            raise ValueError("fields 'previous' and 'previous2' are for reward implicit")
        if self.reward == "judge":
            if self.judgements is None:
                raise ValueError("field 'judgements' is required with reward judge")
            return self
        if self.judgements is not None or self.previous_judgements is not None:
            raise ValueError("fields 'judgements' and 'previous_judgements' are for reward judge")
        if self.reward == "rewardModel":
            return self
        if self.previous is None:
            raise ValueError("field 'previous' (scores of M_{t-1}) is required with reward "
                             "implicit")
        if self.iteration >= 2 and self.previous2 is None:
            raise ValueError("field 'previous2' (scores of M_{t-2}) is required at iteration "
                             f"{self.iteration} >= 2")
        if self.iteration == 1 and self.previous2 is not None:
            raise ValueError("field 'previous2' must be absent at iteration 1: r_0 is M0's "
                             "length-normalised log-likelihood")
        return self


class SpinRequest(_Request):
    """SPIN's data for one iteration: M_t answers each SFT prompt once; the pair is (reference
    answer, own answer), with M_t's log-probs of both as dpo's reference. One engine on one Pod:
    the stage both generates and scores, which node sharding (one call per stage) does not
    cover."""

    stage: Literal["spin"] = "spin"
    model: str = Field(description="M_t: generates the rejected answers and is the reference")
    data: str = Field(description="SFT data: single-turn examples, their answers the chosen")
    max_examples: int | None = Field(default=None, ge=1, description="the first N examples")
    temperature: float = Field(default=0.8, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: PositiveInt = 768
    max_length: PositiveInt = 2048
    batch_size: PositiveInt = 8
    backend: InferenceBackend = "transformers"
    precision: Precision = "float32"


class DpoRequest(_Request):
    stage: Literal["dpo"] = "dpo"
    model: str = Field(description="M_t: the policy's start and the (implicit) reference")
    pairs: str = Field(description="the consistency stage's pairs.jsonl")
    beta: float = Field(default=0.1, gt=0)
    train: TrainParams


LM_EVAL_SCHEME = "lm-eval://"  # a task lm-evaluation-harness knows by name


class EvalTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    uri: str
    format: TaskFormat
    limit: int | None = Field(default=None, ge=1)
    # lm_eval only: which of lm-eval's results is the task's accuracy, and few-shot examples.
    metric: str | None = None
    fewshot: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _lm_eval_fields(self):
        if self.format != "lm_eval" and (self.metric is not None or self.fewshot is not None):
            raise ValueError(f"task {self.name}: 'metric' and 'fewshot' apply to format "
                             "lm_eval only")
        return self


class EvaluateRequest(_InferenceRequest):
    stage: Literal["evaluate"] = "evaluate"
    model: str
    tasks: list[EvalTask] = Field(min_length=1)
    max_tokens: PositiveInt = 512
    batch_size: PositiveInt = 8
    precision: Precision = "float32"

    @model_validator(mode="after")
    def _unique_task_names(self):
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("field 'tasks': task names must be unique")
        return self


StageRequest = Annotated[
    SftRequest | SampleRequest | ScoreRequest | JudgeRequest | RewardRequest | ConsistencyRequest
    | SpinRequest | DpoRequest | EvaluateRequest,
    Field(discriminator="stage"),
]


class _RequestEnvelope(BaseModel):
    request: StageRequest


def parse_request(data: dict) -> SftRequest | SampleRequest | ScoreRequest | JudgeRequest \
        | RewardRequest | ConsistencyRequest | SpinRequest | DpoRequest | EvaluateRequest:
    """Validate a request dict into its stage's model (raises pydantic.ValidationError)."""
    return _RequestEnvelope.model_validate({"request": data}).request


# --- the stages -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageFacts:
    """What the rest of the system needs to know of a stage, besides its request."""

    name: str
    request: type[_Request]
    trains: bool  # writes a model from TrainParams: torchrun under DeepSpeed, several nodes
    wants_gpu: bool  # gets the operator's default GPU count when a run names none
    per_model: bool = False  # one step per model in an iteration: its Job names the model


STAGE_TABLE: dict[str, StageFacts] = {f.name: f for f in (
    StageFacts("sft", SftRequest, trains=True, wants_gpu=True),
    StageFacts("sample", SampleRequest, trains=False, wants_gpu=True),
    StageFacts("score", ScoreRequest, trains=False, wants_gpu=True, per_model=True),
    StageFacts("judge", JudgeRequest, trains=False, wants_gpu=True, per_model=True),
    StageFacts("reward", RewardRequest, trains=False, wants_gpu=True),
    StageFacts("consistency", ConsistencyRequest, trains=False, wants_gpu=False),
    StageFacts("spin", SpinRequest, trains=False, wants_gpu=True),
    StageFacts("dpo", DpoRequest, trains=True, wants_gpu=True),
    StageFacts("evaluate", EvaluateRequest, trains=False, wants_gpu=True),
)}
STAGES: tuple[str, ...] = tuple(STAGE_TABLE)


# --- the manifest -----------------------------------------------------------------------------

class Timings(BaseModel):
    started: str
    finished: str
    seconds: float
    # CPU time of the stage's process (all its threads): on a machine whose cores other work
    # shares, what the stage would take alone, where `seconds` measures the contention too.
    cpu_seconds: float | None = None


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
