"""One log line per action the operator takes on the cluster (a Job or Service created, a Job
deleted, a run's phase changed, a cleanup started): a fixed action name, then its fields.

The fields go both into the text (`job created run=ns/tiny job=tiny-... step=iter-1/sample`) and,
as `extra`, onto the record, so `--log-format json` gives them as JSON keys.
"""

from __future__ import annotations

import logging

log = logging.getLogger("cream_operator")  # short: kopf's format keeps 20 characters of it


def text(action: str, fields: dict[str, object]) -> str:
    return " ".join([action, *(f"{k}={v}" for k, v in fields.items() if v is not None)])


def action(action: str, **fields: object) -> None:
    log.info(text(action, fields), extra={"action": action, **fields})
