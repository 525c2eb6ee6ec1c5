"""The CreamRun resource as pydantic models: the single source of truth.

The CRD in crds/ is generated from these models (see crd.py) and a test fails when it drifts. Field
names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
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
from cream_stages.generated_tasks import FORMATS as GENERATED_FORMATS
from cream_stages.judge_prompt import pattern_problem, template_problem

from .shapes import NAME, NAME_MAX, NAME_MESSAGE, DataUri, ModelUri, StorageUri, TaskUri

GROUP = "cream.dev"
VERSION = "v1alpha1"
KIND = "CreamRun"
PLURAL = "creamruns"
SINGULAR = "creamrun"
SHORT_NAMES = ["cream"]

QUANTITY = r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$"
LM_EVAL_METRIC = r"^[A-Za-z0-9_]+(,[A-Za-z0-9_-]+)?$"
# Bounds on lists keep the API server's CEL cost estimate of their items' rules bounded.
MAX_PROMPT_SETS = 20  # one per iteration at most: iterations <= 20
MAX_TASKS = 64


class _Model(BaseModel):
    # strict: the API server takes no "2" for an integer nor "true" for a boolean; neither do we.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
        strict=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data):
        """2.0 is the integer 2, as the API server takes it (and may store it); 2.5 stays
        refused."""
        if not isinstance(data, dict):
            return data
        ints = set()
        for name, info in cls.model_fields.items():
            if info.annotation is int or set(get_args(info.annotation)) == {int, type(None)}:
                ints |= {name, info.alias}
        return {k: int(v) if k in ints and isinstance(v, float) and v.is_integer() else v
                for k, v in data.items()}


class ModelSpec(_Model):
    """Where the models come from: M0, and optionally an already fine-tuned M1."""

    base: ModelUri = Field(
        description="M0, the base model: hf://org/name, s3://bucket/prefix (a checkpoint "
        "directory), a local directory, or builtin://tiny-llama (a tiny random model for smoke "
        "tests)",
    )
    sft: ModelUri | None = Field(
        default=None,
        description="An already fine-tuned M1 (same URI forms as base); when set the sft stage "
        "is skipped and data.sft is not needed",
    )
    max_length: int = Field(
        default=2048, ge=16, le=131072,
        description="Token budget of prompt plus response for scoring and training; longer "
        "sequences keep the prompt and cut the response",
    )
    precision: Precision = Field(
        default="bfloat16",
        description="Dtype of the weights for inference and training: float32, bfloat16 or "
        "float16 (on the CPU use float32)",
    )


def _generated_format_message(kind: str, fmt: str) -> str:
    return f"gen://{kind} items are evaluated with format {fmt}"


class EvalTaskSpec(_Model):
    """One evaluation set: greedy answers, the answer extracted, accuracy reported per task."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", max_length=40)] = Field(
        description="The task's name in results and metrics: lowercase letters, digits and '_'")
    uri: TaskUri = Field(description="The items: s3://<bucket>/<key>, a local file, "
                         "builtin://data/<file> or gen://<kind>?...; JSON or JSONL (for lm_eval: "
                         "lm-eval://<task> or a task YAML)")
    format: TaskFormat = Field(
        description="multiple_choice (ARC, OpenBookQA, SIQA shapes: each item's own labels), "
        "gsm8k (question, answer ending '#### <number>'), or lm_eval (run by EleutherAI's "
        "lm-evaluation-harness: uri is lm-eval://<task> for a task it knows by name, or the URI "
        "of a task YAML whose data files may be s3://, builtin:// or relative paths)")
    limit: int | None = Field(default=None, ge=1, description="Evaluate the first N items")
    metric: Annotated[str, Field(pattern=LM_EVAL_METRIC, max_length=100)] | None = Field(
        default=None,
        description="lm_eval only: the result reported as the task's accuracy, lm-eval's "
        "metric[,filter] (default acc; e.g. exact_match,strict-match)")
    fewshot: int | None = Field(default=None, ge=0, le=64,
                                description="lm_eval only: few-shot examples (default: the "
                                "task's own)")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "self.format == 'lm_eval' || (!has(self.metric) && !has(self.fewshot))",
        "message": "metric and fewshot apply to format lm_eval only",
    }, *({
        "rule": f"!self.uri.matches('^gen://{kind}([/?]|$)') || self.format == '{fmt}'",
        "message": _generated_format_message(kind, fmt),
        "fieldPath": ".format",
    } for kind, fmt in GENERATED_FORMATS.items())]})

    @field_validator("format")
    @classmethod
    def _generated_format(cls, fmt: str, info: ValidationInfo) -> str:
        uri = info.data.get("uri") or ""
        for kind, want in GENERATED_FORMATS.items():
            if re.match(f"^gen://{kind}([/?]|$)", uri) and fmt != want:
                raise ValueError(_generated_format_message(kind, want))
        return fmt

    @model_validator(mode="after")
    def _lm_eval_fields(self):
        if self.format != "lm_eval" and (self.metric is not None or self.fewshot is not None):
            raise ValueError("metric and fewshot apply to format lm_eval only")
        return self


class DataSpec(_Model):
    """The data a run reads: SFT examples and the prompts each iteration samples from."""

    sft: DataUri | None = Field(
        default=None,
        description="SFT chat data (JSON/JSONL: messages, instruction/output or prompt/response "
        "records); required unless model.sft is set",
    )
    prompts: list[DataUri] = Field(
        min_length=1, max_length=MAX_PROMPT_SETS,
        description="Prompt set per iteration (t = 1..T), each a URI of a JSON/JSONL file keyed "
        "by id; a single set is reused every iteration",
    )
    max_prompts: int | None = Field(default=None, ge=1,
                                    description="Use the first N prompts of each set (and, for "
                                    "spin steps, the first N examples of data.sft)")


class SamplingSpec(_Model):
    """Step 1 of an iteration: M_t samples N responses per prompt."""

    # Not `n`: Kubernetes reads YAML 1.1, where a key `n` is the boolean false.
    responses_per_prompt: int = Field(
        default=5, ge=2, le=64, description="N, the responses sampled per prompt")
    temperature: float = Field(default=0.8, gt=0, le=5, description="Sampling temperature")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling threshold")
    max_tokens: int = Field(default=768, ge=1, le=32768,
                            description="Longest response, in tokens")
    backend: InferenceBackend = Field(
        default="vllm", description="vllm (GPU) or transformers (CPU or GPU)")
    batch_size: int = Field(default=64, ge=1,
                            description="Prompts per generation batch (transformers backend)")


class ScoringSpec(_Model):
    """Step 2: every model scores every response (summed log-probabilities)."""

    backend: InferenceBackend = Field(
        default="vllm",
        description="vllm or transformers: every score of an iteration comes from this one "
        "backend and precision",
    )
    batch_size: int = Field(default=16, ge=1, description="Sequences per scoring batch")


class ConsistencySpec(_Model):
    """Step 3: how rankings of consecutive models are compared, and how that weights DPO."""

    method: RankMethod = Field(
        default="kendall",
        description="kendall (Kendall's tau), spearman (Spearman's rho) or toporder (best and "
        "worst agree)",
    )
    strategy: Strategy = Field(
        default="avg",
        description="avg: every pair gets the mean consistency; dynamic: each pair its own; "
        "none: plain self-rewarding (C = 1)",
    )


class TrainSpec(_Model):
    """Training settings shared by sft and dpo."""

    epochs: int = Field(ge=1, le=100, description="Passes over the training data")
    learning_rate: float = Field(gt=0, lt=1, description="Constant learning rate (AdamW)")
    batch_size: int = Field(ge=1, le=4096, description="Examples per micro-batch and process")
    gradient_accumulation: int = Field(default=1, ge=1, le=1024,
                                       description="Micro-batches per optimizer step")
    backend: TrainBackend = Field(
        default="deepspeed",
        description="deepspeed (ZeRO, torchrun; several GPUs and nodes) or transformers (one "
        "process)",
    )
    zero_stage: Literal[2, 3] = Field(default=3, description="DeepSpeed ZeRO stage: 2 or 3")


class SftSpec(TrainSpec):
    """The sft stage: M0 -> M1 on data.sft, the loss on response tokens only."""

    epochs: int = Field(default=5, ge=1, le=100, description="Passes over the training data")
    learning_rate: float = Field(default=5e-6, gt=0, lt=1,
                                 description="Constant learning rate (AdamW)")
    batch_size: int = Field(default=4, ge=1, le=4096,
                            description="Examples per micro-batch and process")


class DpoSpec(TrainSpec):
    """Step 4: M_t -> M_{t+1} with the consistency-weighted DPO loss, reference M_t."""

    epochs: int = Field(default=1, ge=1, le=100, description="Passes over the pairs")
    learning_rate: float = Field(default=1e-6, gt=0, lt=1,
                                 description="Constant learning rate (AdamW)")
    batch_size: int = Field(default=4, ge=1, le=4096,
                            description="Pairs per micro-batch and process")
    beta: float = Field(default=0.1, gt=0, le=10,
                        description="DPO's beta: the strength of the KL constraint")


class EvaluationSpec(_Model):
    """Step 5: accuracy of each new model (and of M1, the baseline) on the tasks."""

    # A list-map keyed by name: the API server refuses a repeated task name as we do.
    tasks: list[EvalTaskSpec] = Field(
        default_factory=list, max_length=MAX_TASKS,
        description="Evaluation sets, each name once; none skips evaluation",
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["name"]})
    max_tokens: int = Field(default=512, ge=1, le=32768,
                            description="Longest answer, in tokens (greedy decoding)")
    backend: InferenceBackend = Field(default="vllm",
                                      description="vllm (GPU) or transformers (CPU or GPU)")
    batch_size: int = Field(default=64, ge=1,
                            description="Items per generation batch (transformers backend)")
    baseline: bool = Field(default=True, description="Also evaluate M1, as iteration 0")

    @model_validator(mode="after")
    def _unique_names(self):
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique; repeated: {', '.join(dup)}")
        return self


class StorageSpec(_Model):
    """Where the run's artifacts and checkpoints go."""

    uri: StorageUri = Field(
        default="",
        description="Artifact root, s3://<bucket>/<prefix> (or a local directory for `cream "
        "run`); empty uses the operator's default",
    )
    secret_name: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally "
        "AWS_ENDPOINT_URL, AWS_REGION; empty uses the operator's default",
    )


TENSOR_PARALLEL_RULE = {
    "rule": "!has(self.tensorParallel) || self.tensorParallel == 1 || (has(self.gpus) && "
            "self.gpus >= self.tensorParallel && self.gpus % self.tensorParallel == 0)",
    "message": "tensorParallel must divide gpus (set gpus to a multiple of it): each engine "
               "takes tensorParallel GPUs",
    "fieldPath": ".tensorParallel",
}


class StageResources(_Model):
    """What one stage's Pods get."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        TENSOR_PARALLEL_RULE]})

    gpus: int | None = Field(
        default=None, ge=0, le=64,
        description="nvidia.com/gpu per Pod; empty: the operator's default for GPU stages, 0 "
        "for consistency",
    )
    cpu: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None, description="CPU request, a Kubernetes quantity (e.g. 4, 500m)")
    memory: Annotated[str, Field(pattern=QUANTITY)] | None = Field(
        default=None, description="Memory request and limit, a Kubernetes quantity (e.g. 64Gi)")
    nodes: int | None = Field(
        default=None, ge=1, le=64,
        description="Pods of the stage's Job, an Indexed Job when more than 1: sft/dpo train "
        "under torchrun across them; sample, score and evaluate split their batches between "
        "them (node 0 merges); consistency always runs on 1",
    )
    tensor_parallel: int = Field(
        default=1, ge=1, le=64,
        description="sample, score and evaluate with the vllm backend: GPUs per engine (vLLM "
        "tensor parallelism) for a model larger than one GPU; must divide gpus, and the Pod "
        "runs gpus / tensorParallel engines; 1 for the other stages",
    )
    image: str | None = Field(default=None,
                              description="This stage's image, over scheduling.image and the "
                              "operator's stage image")

    @field_validator("tensor_parallel")
    @classmethod
    def _tensor_parallel_divides_gpus(cls, tp: int, info: ValidationInfo) -> int:
        gpus = info.data.get("gpus")
        if tp > 1 and (gpus is None or gpus < tp or gpus % tp):
            raise ValueError(f"must divide gpus ({gpus if gpus is not None else 'unset'}): set "
                             "gpus to a multiple of it; each engine takes tensorParallel GPUs")
        return tp


# Stages that run one engine on one GPU (group) whatever their resources say.
NO_TENSOR_PARALLEL = ("sft", "reward", "consistency", "spin", "dpo")
# spin generates then scores: node sharding covers one engine call per stage; reward runs one
# transformers model.
ONE_NODE = ("spin", "reward")


class ResourcesSpec(_Model):
    """Per-stage Pod resources."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": " && ".join(f"(!has(self.{st}) || !has(self.{st}.tensorParallel) || "
                            f"self.{st}.tensorParallel == 1)"
                            for st in NO_TENSOR_PARALLEL),
        "message": "tensorParallel applies to sample, score and evaluate only: leave it 1 for "
                   "sft, consistency, spin and dpo",
    }, *({
        "rule": f"!has(self.{st}) || !has(self.{st}.nodes) || self.{st}.nodes == 1",
        "message": f"{st} runs on one Pod: leave nodes 1",
        "fieldPath": f".{st}.nodes",
    } for st in ONE_NODE)]})

    sft: StageResources = Field(default_factory=StageResources,
                                description="The sft stage's Pods")
    sample: StageResources = Field(default_factory=StageResources,
                                   description="The sample stage's Pods")
    score: StageResources = Field(default_factory=StageResources,
                                  description="Each score stage's Pods (one Job per model)")
    judge: StageResources = Field(default_factory=StageResources,
                                  description="Each judge stage's Pods (one Job per model)")
    reward: StageResources = Field(default_factory=StageResources,
                                   description="The reward stage's Pod (an external reward model; "
                                   "one; one device)")
    consistency: StageResources = Field(default_factory=StageResources,
                                        description="The consistency stage's Pods (CPU only)")
    spin: StageResources = Field(default_factory=StageResources,
                                 description="The spin stage's Pod (one; one engine)")
    dpo: StageResources = Field(default_factory=StageResources,
                                description="The dpo stage's Pods")
    evaluate: StageResources = Field(default_factory=StageResources,
                                     description="The evaluate stage's Pods")

    @model_validator(mode="after")
    def _tensor_parallel_for_inference_only(self):
        for stage in NO_TENSOR_PARALLEL:
            tp = getattr(self, stage).tensor_parallel
            if tp != 1:
                raise ValueError(f"{stage}.tensorParallel is {tp}: tensor parallelism applies "
                                 "to sample, score and evaluate only; leave it 1")
        for stage in ONE_NODE:
            nodes = getattr(self, stage).nodes
            if nodes not in (None, 1):
                raise ValueError(f"{stage}.nodes is {nodes}: {stage} runs on one Pod; leave "
                                 "it 1")
        return self


class Toleration(_Model):
    """A Pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="The taint key; empty with Exists "
                            "matches every taint")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)")
    value: str | None = Field(default=None, description="The taint value, for Equal")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to match; empty matches all")
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated")


class SchedulingSpec(_Model):
    """Where and how the stage Jobs run."""

    image: str | None = Field(default=None, description="Stage image for every stage")
    node_selector: dict[str, str] = Field(default_factory=dict,
                                          description="Node labels every stage Pod requires")
    tolerations: list[Toleration] = Field(default_factory=list,
                                          description="Tolerations of every stage Pod")
    priority_class_name: str | None = Field(default=None,
                                            description="PriorityClass of the stage Pods")
    service_account_name: str | None = Field(default=None,
                                             description="ServiceAccount of the stage Pods")
    queue_name: str | None = Field(
        default=None, description="Kueue LocalQueue: Jobs are created suspended for admission"
    )
    backoff_limit: int = Field(default=2, ge=0, le=20,
                               description="Retries of a crashed stage (bad input is not "
                               "retried)")
    active_deadline_seconds: int | None = Field(
        default=None, ge=60, description="A stage's Job fails after this many seconds")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Finished Jobs are deleted after this many seconds "
        "(their results stay in the status)")


StepKind = Literal["sft", "spin", "selfReward"]
RewardKind = Literal["implicit", "judge", "rewardModel"]
MAX_SCHEDULE = 16
MAX_ROUNDS = 20  # iterations over the whole schedule, as `iterations` allows without one
DEFAULT_LAMBDA = 0.1

# What fields each step kind takes: the one table the validators (pydantic and CEL) read.
STEP_FIELDS = {"sft": (), "spin": ("iterations", "lambda"),
               "selfReward": ("iterations", "reward", "judge", "rewardModel")}
# An unescaped "(" that opens a capturing group: "(" not followed by "?", or a named group.
# The API server's approximation of judge_math.pattern_problem (CEL cannot compile a regex).
CAPTURING_GROUP_CEL = r"(^|[^\\])\((\?P?<[A-Za-z_]|[^?])"


class JudgeSpec(_Model):
    """LLM-as-a-Judge: the policy grades each sampled response K times; the pair is the best
    and the worst judged response."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!has(self.template) || (self.template.contains('{prompt}') && "
                 "self.template.contains('{response}'))",
         "message": "the template must contain {prompt} and {response}",
         "fieldPath": ".template"},
        {"rule": f"!has(self.pattern) || self.pattern.matches(r'{CAPTURING_GROUP_CEL}')",
         "message": "the pattern needs a group capturing the number, e.g. Score: ([0-9]+)",
         "fieldPath": ".pattern"},
        {"rule": "(has(self.minScore) ? self.minScore : 0.0) <= "
                 "(has(self.maxScore) ? self.maxScore : 5.0)",
         "message": "minScore must not be above maxScore",
         "fieldPath": ".minScore"},
    ]})

    template: Annotated[str, Field(min_length=1, max_length=8192)] | None = Field(
        default=None,
        description="The judge prompt, with {prompt} and {response} where the question and the "
        "response go; default: the project's wording of SRLM's additive 5-point rubric")
    pattern: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None,
        description="Regular expression whose first group captures the score in a judgement "
        "(first match); default: Score: <number>")
    judgements: int = Field(default=3, ge=1, le=16,
                            description="K, judgements per response, their scores averaged")
    min_score: float = Field(default=0.0, ge=-1000, le=1000,
                             description="The lowest valid score; a number outside the range "
                             "is an unparseable judgement")
    max_score: float = Field(default=5.0, ge=-1000, le=1000,
                             description="The highest valid score")
    max_tokens: int = Field(default=256, ge=1, le=32768,
                            description="Longest judgement, in tokens")
    consistency: bool = Field(
        default=False,
        description="CREAM's consistency regularisation of judge rankings: the previous model "
        "also judges the responses and each pair is weighted by C = (tau + 1) / 2 between the "
        "two judges' rankings (spec.consistency's method and strategy)")

    @field_validator("template")
    @classmethod
    def _placeholders(cls, template: str | None) -> str | None:
        problem = template and template_problem(template)
        if problem:
            raise ValueError(problem)
        return template

    @field_validator("pattern")
    @classmethod
    def _number_group(cls, pattern: str | None) -> str | None:
        problem = pattern and pattern_problem(pattern)
        if problem:
            raise ValueError(problem)
        return pattern

    @field_validator("max_score")
    @classmethod
    def _range(cls, high: float, info: ValidationInfo) -> float:
        low = info.data.get("min_score")
        if low is not None and low > high:
            raise ValueError(f"minScore ({low}) must not be above maxScore ({high})")
        return high


class RewardModelSpec(_Model):
    """An external reward model that ranks the sampled responses instead of the policy."""

    uri: ModelUri = Field(
        description="The reward model: any model URI (hf://, s3://, a local directory, GGUF; "
        "builtin://tiny-reward and builtin://tiny-cloud for smoke tests)")
    type: Literal["classic", "cloud"] = Field(
        description="classic (a scalar head on a causal LM: AutoModelForSequenceClassification "
        "with one label, as TRL's RewardTrainer saves it) or cloud (Critique-out-Loud: a causal "
        "LM that writes a critique first, with its reward head in reward_head.safetensors "
        "beside the checkpoint)")
    critique_tokens: int = Field(default=256, ge=1, le=4096,
                                 description="cloud only: the longest critique, in tokens")


class ScheduleStep(_Model):
    """One step of a run's schedule; the fields that apply depend on its kind."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        *({"rule": f"self.kind in {[k for k, f in STEP_FIELDS.items() if name in f]!r} || "
                   f"!has(self.{name})",
           "message": f"{name} applies to step kinds "
                      f"{', '.join(k for k, f in STEP_FIELDS.items() if name in f)} only",
           "fieldPath": f".{name}"}
          for name in ("iterations", "lambda", "reward", "judge", "rewardModel")),
        {"rule": "!has(self.judge) || (has(self.reward) && self.reward == 'judge')",
         "message": "judge settings need reward: judge",
         "fieldPath": ".judge"},
        {"rule": "has(self.rewardModel) == (has(self.reward) && self.reward == 'rewardModel')",
         "message": "reward: rewardModel needs rewardModel (its uri and type), and rewardModel "
                    "needs reward: rewardModel",
         "fieldPath": ".rewardModel"}]})

    kind: StepKind = Field(
        description="sft (M0 -> M1 on data.sft, with spec.sft's settings), spin (self-play "
        "fine-tuning: chosen = data.sft's reference answer, rejected = the model's own "
        "generation, trained with spec.dpo's settings) or selfReward (sample, reward, DPO: "
        "CREAM's iteration)")
    iterations: int | None = Field(
        default=None, ge=1, le=MAX_ROUNDS,
        description="spin and selfReward: how many times the step runs, each from the model "
        "the last one made (default 1)")
    lambda_: float | None = Field(
        default=None, gt=0, le=10, alias="lambda",
        description=f"spin only: SPIN's lambda, the weight of the logistic loss against the "
        f"previous iteration's model (DPO's beta; default {DEFAULT_LAMBDA})")
    reward: RewardKind | None = Field(
        default=None,
        description="selfReward only: implicit (CREAM's DPO reward, the log-ratio of the "
        "current to the previous model, consistency-regularised by spec.consistency; the "
        "default), judge (LLM-as-a-Judge: the model grades its own responses, see judge) or "
        "rewardModel (an external reward model ranks them, see rewardModel)")
    judge: JudgeSpec | None = Field(
        default=None, description="selfReward with reward judge: the judge's prompt, pattern, "
        "K, range and consistency regularisation (absent: the defaults)")
    reward_model: RewardModelSpec | None = Field(
        default=None, description="selfReward with reward rewardModel: the reward model "
        "(required there); its pairs weigh 1, a fixed model has no previous ranking to be "
        "consistent with")

    @model_validator(mode="after")
    def _fields_of_kind(self):
        allowed = STEP_FIELDS[self.kind]
        for name, value in (("iterations", self.iterations), ("lambda", self.lambda_),
                            ("reward", self.reward), ("judge", self.judge),
                            ("rewardModel", self.reward_model)):
            if value is not None and name not in allowed:
                kinds = ", ".join(k for k, f in STEP_FIELDS.items() if name in f)
                raise ValueError(f"{name} applies to step kinds {kinds} only, not "
                                 f"{self.kind}")
        if self.judge is not None and self.reward != "judge":
            raise ValueError("judge settings need reward: judge")
        if (self.reward_model is not None) != (self.reward == "rewardModel"):
            raise ValueError("reward: rewardModel needs rewardModel (its uri and type), and "
                             "rewardModel needs reward: rewardModel")
        return self

    def judges(self) -> bool:
        return self.kind == "selfReward" and self.reward == "judge"

    def ranks_externally(self) -> bool:
        """Whether a judge or a reward model, not the implicit reward, makes the pairs."""
        return self.kind == "selfReward" and self.reward in ("judge", "rewardModel")


class EarlyStoppingSpec(_Model):
    """Stop iterating when a metric fails to improve on its best so far by more than minDelta."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "self.metric == 'accuracy' ? has(self.task) : !has(self.task)",
        "message": "task names the evaluation task of metric accuracy (and only of it)",
        "fieldPath": ".task",
    }]})

    metric: Literal["consistencyRate", "accuracy"] = Field(
        description="consistencyRate (each selfReward iteration's) or accuracy (on `task`, of "
        "each evaluated model, the SFT baseline included)")
    task: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", max_length=40)] | None = Field(
        default=None, description="accuracy only: the name of one of evaluation.tasks")
    min_delta: float = Field(default=0.0, ge=0, le=1,
                             description="The margin: a value not above best + minDelta is no "
                             "improvement")
    patience: int = Field(default=1, ge=1, le=MAX_ROUNDS,
                          description="Iterations without improvement, in a row, that stop it")

    @model_validator(mode="after")
    def _task_for_accuracy(self):
        if (self.metric == "accuracy") != (self.task is not None):
            raise ValueError("task names the evaluation task of metric accuracy (and only of "
                             "it)")
        return self


# Which spec section holds the inference backend of each stage with engines.
TENSOR_PARALLEL_BACKENDS = {"sample": "sampling", "score": "scoring", "judge": "sampling",
                            "evaluate": "evaluation"}


class CreamRunSpec(_Model):
    """What a user asks for: T iterations of CREAM from a base model."""

    model: ModelSpec = Field(description="M0 and optionally M1 (immutable)")
    data: DataSpec = Field(description="SFT data and prompt sets")
    iterations: int = Field(default=3, ge=1, le=MAX_ROUNDS,
                            description="T, the number of CREAM iterations (without a "
                            "schedule; with one, each step says its own)")
    schedule: list[ScheduleStep] | None = Field(
        default=None, min_length=1, max_length=MAX_SCHEDULE,
        description="The run's steps in order, e.g. [{kind: sft}, {kind: spin, iterations: "
        "2}, {kind: selfReward, iterations: 2}]; absent: sft (unless model.sft is set), then "
        "`iterations` CREAM iterations")
    seed: int = Field(default=42, ge=0,
                      description="Every stage is deterministic given its request and seed")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec,
                                   description="Step 1: sampling responses")
    scoring: ScoringSpec = Field(default_factory=ScoringSpec,
                                 description="Step 2: scoring them under each model")
    consistency: ConsistencySpec = Field(default_factory=ConsistencySpec,
                                         description="Step 3: ranking consistency and pairs")
    sft: SftSpec = Field(default_factory=SftSpec, description="Training M1 from M0")
    dpo: DpoSpec = Field(default_factory=DpoSpec, description="Step 4: DPO training")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec,
                                       description="Step 5: accuracy per task")
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None, description="Stop iterating when a metric stops improving; the status "
        "says which step stopped the run and why")
    storage: StorageSpec = Field(default_factory=StorageSpec,
                                 description="Artifact storage (immutable)")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec,
                                     description="Per-stage Pod resources")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec,
                                       description="Images, placement, queueing and retries")
    suspend: bool = Field(default=False, description="Pause before the next stage; running "
                          "stages finish")
    cleanup_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", description="Delete removes the run's artifacts with the CreamRun"
    )

    def rounds(self) -> list[ScheduleStep]:
        """The iterations t = 1..T in order, each the step it belongs to (sft excluded)."""
        if self.schedule is None:
            return [ScheduleStep(kind="selfReward")] * self.iterations
        return [step for step in self.schedule if step.kind != "sft"
                for _ in range(step.iterations or 1)]

    def trains_sft(self) -> bool:
        """Whether the run trains M1 = SFT(M0) itself."""
        if self.schedule is None:
            return self.model.sft is None
        return any(step.kind == "sft" for step in self.schedule)

    @model_validator(mode="after")
    def _cross_field(self):
        if self.schedule is None and self.model.sft is None and self.data.sft is None:
            raise ValueError(
                "data.sft is required to train M1 from model.base; or set model.sft to an "
                "already fine-tuned model"
            )
        stop = self.early_stopping
        if stop is not None and stop.task is not None \
                and stop.task not in {t.name for t in self.evaluation.tasks}:
            raise ValueError(f"earlyStopping.task {stop.task!r} is not one of evaluation.tasks")
        n_rounds = len(self.rounds())
        n_sets = len(self.data.prompts)
        if 1 < n_sets < n_rounds:
            raise ValueError(
                f"data.prompts has {n_sets} prompt sets for {n_rounds} iterations: give one "
                "set (reused every iteration) or at least one per iteration"
            )
        return self

    @field_validator("schedule")
    @classmethod
    def _possible_schedule(cls, schedule, info: ValidationInfo):
        """Refuse what no run could do, naming the step: see schedule_problems."""
        model, data = info.data.get("model"), info.data.get("data")
        if schedule is None or model is None or data is None:
            return schedule  # their own problems are reported
        problems = schedule_problems(schedule, model, data)
        if problems:
            raise ValueError("; ".join(problems))
        return schedule

    @model_validator(mode="after")
    def _tensor_parallel_needs_vllm(self):
        for stage, section in TENSOR_PARALLEL_BACKENDS.items():
            tp = getattr(self.resources, stage).tensor_parallel
            backend = getattr(self, section).backend
            if tp > 1 and backend != "vllm":
                raise ValueError(f"resources.{stage}.tensorParallel is {tp}, which needs "
                                 f"{section}.backend vllm (it is {backend}): the transformers "
                                 "backend runs a model on one device")
        return self


def schedule_problems(schedule: list[ScheduleStep], model: ModelSpec, data: DataSpec) \
        -> list[str]:
    """Why a schedule cannot run, each problem naming its step (crd.SPEC_RULES mirrors these
    for the API server). M0 always exists, so a step may come first unless it needs more: the
    implicit reward compares the current model with the previous one."""
    problems = []
    sft_at = [i for i, step in enumerate(schedule) if step.kind == "sft"]
    if sft_at and sft_at != [0]:
        problems.append(f"step [{sft_at[-1]}]: an sft step can only be the first step, once "
                        "(it makes M1 from M0)")
    if sft_at and model.sft is not None:
        problems.append(f"step [{sft_at[0]}]: model.sft is already M1; remove the sft step or "
                        "model.sft")
    for i, step in enumerate(schedule):
        if step.kind in ("sft", "spin") and data.sft is None:
            problems.append(f"step [{i}]: a {step.kind} step needs data.sft (its "
                            f"{'examples' if step.kind == 'sft' else 'reference answers'})")
    first = schedule[0]
    if first.kind == "selfReward" and model.sft is None:
        if not first.ranks_externally():
            problems.append("step [0]: the implicit reward of a first selfReward step compares "
                            "M0 with a previous model, and there is none: start with an sft "
                            "step or set model.sft")
        elif first.judge is not None and first.judge.consistency:
            problems.append("step [0]: judge consistency compares M0's judge rankings with a "
                            "previous model's, and there is none: start with an sft step, set "
                            "model.sft, or leave judge.consistency false")
    total = sum(step.iterations or 1 for step in schedule if step.kind != "sft")
    if total > MAX_ROUNDS:
        problems.append(f"{total} iterations in all; at most {MAX_ROUNDS}")
    return problems


# --- status -------------------------------------------------------------------------------------

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class Condition(_Model):
    """A metav1.Condition: Progressing, Suspended, Succeeded and Failed are always present;
    PodCreationFailed appears once a stage's Job could not create its Pods."""

    type: str = Field(description="Progressing, Suspended, Succeeded, Failed or PodCreationFailed "
                                  "(True while a stage's Job cannot create its Pods)")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown")
    reason: str = Field(description="Why, in one CamelCase word")
    message: str = Field(default="", description="Why, for people")
    last_transition_time: str = Field(description="When status last changed (RFC 3339)")
    observed_generation: int | None = Field(
        default=None, description="The spec generation the condition was set for")


class IterationResult(_Model):
    """What one iteration achieved."""

    iteration: int = Field(ge=0, description="t; 0 is the SFT baseline (M1)")
    kind: StepKind | None = Field(default=None,
                                  description="The schedule step this iteration belongs to "
                                  "(runs with a schedule)")
    consistency_rate: float | None = Field(
        default=None, description="Mean consistency C over the kept prompts, in [0, 1]")
    pairs: int | None = Field(default=None, description="Preference pairs DPO trained on")
    dropped: int | None = Field(default=None,
                                description="Prompts dropped because their rewards all tie "
                                "(spin: because the own answer equals the reference)")
    judge_parse_failures: int | None = Field(
        default=None, description="judge rewarding: judgements the pattern could not read a "
        "score from (left out of the means, never scored 0)")
    judge_score_mean: float | None = Field(
        default=None, description="judge rewarding: the mean parsed judge score")
    judge_score_counts: dict[str, int] = Field(
        default_factory=dict, description="judge rewarding: parsed judgements by score, the "
        "judge's score distribution")
    reward_model_mean: float | None = Field(
        default=None, description="reward-model rewarding: the mean reward of the sampled "
        "responses")
    reward_model_std: float | None = Field(
        default=None, description="reward-model rewarding: the rewards' standard deviation (a "
        "reward model that scores everything alike ranks nothing)")
    reward_margin: float | None = Field(
        default=None, description="dpo (also of SPIN): mean z, the chosen response's implicit "
        "reward minus the rejected one's, over training (TRL's rewards/margins)")
    reward_accuracy: float | None = Field(
        default=None, description="dpo (also of SPIN): share of pairs with z > 0 over training "
        "(TRL's rewards/accuracies)")
    accuracy: dict[str, float] = Field(
        default_factory=dict, description="Accuracy per task of the model this iteration made")
    model_uri: str | None = Field(default=None, description="Where that model is")


# Pending: the stage's Job exists but is suspended, waiting for admission by its Kueue queue.
StepPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class StepMetrics(_Model):
    """The parts of a stage's manifest metrics that the run's results are made of."""

    consistency_rate: float | None = Field(default=None, description="consistency's mean C")
    pairs: int | None = Field(default=None, description="consistency's (or spin's) pairs")
    dropped: int | None = Field(default=None,
                                description="consistency's (or spin's) dropped prompts")
    parse_failures: int | None = Field(default=None,
                                       description="judge's unparseable judgements")
    score_mean: float | None = Field(default=None, description="judge's mean parsed score")
    score_histogram: dict[str, int] = Field(default_factory=dict,
                                            description="judge's parsed judgements by score")
    reward_mean: float | None = Field(default=None, description="reward's mean reward")
    reward_std: float | None = Field(default=None,
                                     description="reward's standard deviation of rewards")
    reward_margin: float | None = Field(default=None, description="dpo's mean reward margin")
    reward_accuracy: float | None = Field(default=None,
                                          description="dpo's reward accuracy")
    accuracy: dict[str, float] = Field(default_factory=dict,
                                       description="evaluate's accuracy per task")


class StepStatus(_Model):
    """One started stage: its Job, its outcome and its metrics (kept after the Job is gone)."""

    key: str = Field(description="The step's key in the run's plan, e.g. iter-1/score-m0")
    stage: str = Field(description="The stage it runs")
    iteration: int = Field(description="The iteration it belongs to")
    phase: StepPhase = Field(description="Pending (its Job waits for admission by its Kueue "
                             "queue), Running, Succeeded or Failed")
    job: str = Field(description="The name of its Job")
    start_time: str | None = Field(default=None,
                                   description="When it started: its Job was created (RFC 3339)")
    admission_time: str | None = Field(
        default=None, description="When its Kueue queue admitted the Job (RFC 3339; queued stages)")
    completion_time: str | None = Field(default=None,
                                        description="When it finished (RFC 3339)")
    message: str | None = Field(default=None, description="Why it failed, or what it waits for")
    metrics: StepMetrics | None = Field(default=None,
                                        description="Its metrics, from its termination message")


class CreamRunStatus(_Model):
    """The run's progress, observed by the operator; a restarted operator resumes from it."""

    phase: Phase | None = Field(default=None,
                                description="Pending, Running, Succeeded, Failed or Suspended")
    iteration: int | None = Field(default=None,
                                  description="The iteration of the first unfinished stage")
    stage: str | None = Field(default=None, description="The first unfinished stage")
    consistency_rate: float | None = Field(
        default=None, description="Consistency rate of the latest iteration (3 decimals)")
    accuracy: float | None = Field(
        default=None,
        description="Mean accuracy over the tasks of the latest evaluated model (3 decimals)")
    message: str | None = Field(default=None, description="What is happening, for people")
    stopped_by: str | None = Field(
        default=None, description="Early stopping: the step whose metric stopped the run (the "
        "message says why); later iterations do not run")
    artifacts: str | None = Field(default=None, description="The run's artifact root")
    start_time: str | None = Field(default=None, description="When the run started")
    completion_time: str | None = Field(default=None,
                                        description="When it succeeded or failed")
    observed_generation: int | None = Field(
        default=None, description="The spec generation this status was decided on")
    conditions: list[Condition] = Field(default_factory=list, description="The run's conditions")
    results: list[IterationResult] = Field(default_factory=list,
                                           description="One row per iteration, 0 first")
    steps: list[StepStatus] = Field(default_factory=list,
                                    description="Every stage started, in plan order")


class CreamRun(_Model):
    """The whole object, as `cream validate` reads it from a file."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True,
        strict=True,
    )

    api_version: Literal["cream.dev/v1alpha1"]
    kind: Literal["CreamRun"]
    metadata: dict
    spec: CreamRunSpec

    @field_validator("metadata")
    @classmethod
    def _metadata_name(cls, metadata: dict) -> dict:
        name = metadata.get("name")
        if not isinstance(name, str) or not re.fullmatch(NAME, name) or len(name) > NAME_MAX:
            raise ValueError(NAME_MESSAGE)
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


def problems_of(exc: ValidationError, root: tuple = ()) -> list[str]:
    """'field.path: what is wrong' for each error; `root` is where the validated part sits."""
    problems = []
    for err in exc.errors():
        # Drop pydantic's "Value error, " prefix: the message is already ours.
        msg = err["msg"].removeprefix("Value error, ")
        loc = field_path((*root, *err["loc"]))
        if err["type"] not in ("value_error", "missing", "extra_forbidden") and "input" in err \
                and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against `cream crd` or the README"
        problems.append(f"{loc}: {msg}")
    return problems
