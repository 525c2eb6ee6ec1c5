"""The operator's own configuration, from its environment (set by the Helm chart)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# Handler threads (`cream operator --workers`). A reconcile spends nearly all its time waiting on
# the API server, so threads are how many API calls are in flight. A thousand runs created at once
# (bench/RESULTS.md, bench_scale.py) waited tens of seconds for their first Job with 8 threads and
# up to 7 s at p99 with 32; with 64, under 2 s, at the cost of slower single calls (reconcile p99
# 2 s instead of 1-1.7 s) and with the stage-to-stage latency unchanged. The client's connection
# pool matches it (startup.kube_client).
WORKERS = 64


@dataclass(frozen=True)
class OperatorConfig:
    # Image of every stage unless a CreamRun names its own.
    stage_image: str = "ghcr.io/cream-operator/stages:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    # Artifact root for runs whose spec.storage.uri is empty.
    storage_uri: str = ""
    # Secret (in the run's namespace) with the S3 endpoint and credentials, when the run names none.
    s3_secret: str = "cream-s3"
    # GPUs per Pod for the stages that want one (contract.STAGE_TABLE), when the run does not say.
    default_gpus: int = 1
    # The Python that runs `-m cream_stages` inside the stage image.
    python: str = "python"
    # The port of multi-node training's rendezvous (torchrun --master_port on index 0's Pod).
    torchrun_port: int = 29500
    # The user and group every stage and cleanup Pod runs as: the stages image's (its Dockerfile's
    # USER 10001:10001). The Pod Security Standard `restricted` wants runAsNonRoot, which the
    # kubelet can only verify for a numeric user; None leaves it to the image's USER.
    run_as_user: int | None = 10001
    run_as_group: int | None = 10001
    extra_env: dict[str, str] = field(default_factory=dict)
    # What a CreamRun may name beyond the defaults above (policy.py; the chart's policy.* values):
    # names, or prefixes ending in "*".
    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()
    allowed_secrets: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ if env is None else env)
        extra = {
            k.removeprefix("CREAM_STAGE_ENV_"): v
            for k, v in env.items() if k.startswith("CREAM_STAGE_ENV_")
        }
        return cls(
            stage_image=env.get("CREAM_STAGE_IMAGE", cls.stage_image),
            image_pull_policy=env.get("CREAM_IMAGE_PULL_POLICY", cls.image_pull_policy),
            storage_uri=env.get("CREAM_STORAGE_URI", cls.storage_uri),
            s3_secret=env.get("CREAM_S3_SECRET", cls.s3_secret),
            default_gpus=int(env.get("CREAM_DEFAULT_GPUS", cls.default_gpus)),
            python=env.get("CREAM_STAGE_PYTHON", cls.python),
            torchrun_port=int(env.get("CREAM_TORCHRUN_PORT", cls.torchrun_port)),
            run_as_user=_optional_int(env, "CREAM_STAGE_RUN_AS_USER", cls.run_as_user),
            run_as_group=_optional_int(env, "CREAM_STAGE_RUN_AS_GROUP", cls.run_as_group,
                                       minimum=0),
            extra_env=extra,
            allowed_images=_names(env.get("CREAM_ALLOWED_IMAGES", "")),
            allowed_service_accounts=_names(env.get("CREAM_ALLOWED_SERVICE_ACCOUNTS", "")),
            allowed_secrets=_names(env.get("CREAM_ALLOWED_SECRETS", "")),
        )


def _names(value: str) -> tuple[str, ...]:
    """A comma-separated list (no image reference, account or Secret name has a comma)."""
    return tuple(n.strip() for n in value.split(",") if n.strip())


def _optional_int(env: dict[str, str], name: str, default: int | None,
                  minimum: int = 1) -> int | None:
    """A user (at least 1: runAsNonRoot refuses root) or group id; set but empty means none."""
    value = env.get(name)
    if value is None:
        return default
    if not value.strip():
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < minimum:
        raise ValueError(f"{name}={value!r}: expected a number >= {minimum} (e.g. 10001), or "
                         "empty for the image's own")
    return number
