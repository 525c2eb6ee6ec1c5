"""What a CreamRun may name that the operator then uses with its own rights: the stage images, the
stage Pods' ServiceAccount and the S3 Secret.

Whoever may create a CreamRun may not be allowed to create Pods; without this check they could
make the operator run any image, as any ServiceAccount of the namespace, with any Secret of it (a
confused deputy). The chart decides what is allowed (values `policy.*`, reaching the operator as
CREAM_ALLOWED_*); its ValidatingAdmissionPolicy refuses the same at the API server, and this check
refuses again before any Job exists, for clusters without the policy and runs created before it.

What a run gets by leaving a field empty (the operator's stage image and S3 Secret, the
namespace's `default` ServiceAccount) is always allowed: naming it changes nothing.
"""

from __future__ import annotations

from .config import OperatorConfig
from .spec import CreamRunSpec, ResourcesSpec

DEFAULT_SERVICE_ACCOUNT = "default"


def allows(allowed: tuple[str, ...], name: str) -> bool:
    """An entry is a name, or a prefix ending in `*` ("registry.example/team/*"; "*" is any)."""
    return any(name == a or (a.endswith("*") and name.startswith(a[:-1])) for a in allowed)


def _named(spec: CreamRunSpec) -> list[tuple[str, str, str]]:
    """(field path, kind, value) of every field of the spec that picks an image, a
    ServiceAccount or a Secret, where the run sets it."""
    sched = spec.scheduling
    out = [("spec.scheduling.image", "image", sched.image),
           *((f"spec.resources.{stage}.image", "image", getattr(spec.resources, stage).image)
             for stage in ResourcesSpec.model_fields),
           ("spec.scheduling.serviceAccountName", "serviceAccount", sched.service_account_name),
           ("spec.storage.secretName", "secret", spec.storage.secret_name)]
    return [(path, kind, value) for path, kind, value in out if value]


def refusals(spec: CreamRunSpec, config: OperatorConfig) -> list[str]:
    """One message per field naming what the operator may not use, each saying the fix."""
    rules = {
        "image": (config.stage_image, config.allowed_images, "policy.allowedImages",
                  "the operator's stage image"),
        "serviceAccount": (DEFAULT_SERVICE_ACCOUNT, config.allowed_service_accounts,
                           "policy.allowedServiceAccounts", "the namespace's default account"),
        "secret": (config.s3_secret, config.allowed_secrets, "policy.allowedSecrets",
                   "the operator's S3 Secret"),
    }
    out = []
    for path, kind, value in _named(spec):
        default, allowed, value_name, empty = rules[kind]
        if value == default or allows(allowed, value):
            continue
        listed = ", ".join(allowed) if allowed else "none besides the default"
        out.append(f"{path}: {value} is not allowed ({value_name}: {listed}); leave it empty "
                   f"for {empty} ({default}) or have the operator's installer add it to the "
                   f"chart's {value_name}")
    return out
