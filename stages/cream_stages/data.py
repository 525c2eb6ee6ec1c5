"""Reading the stages' data files, in our formats and the reference project's, failing loudly.

Every error names the file (URI), the record and the field. No torch here: the operator's CLI uses
resolve_data_uri to validate specs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import artifacts
from .errors import StageInputError

BUILTIN_DATA_DIR = Path(__file__).resolve().parent / "builtin" / "data"
BUILTIN_DATA_PREFIX = "builtin://data/"


def resolve_data_uri(uri: str) -> str:
    """`builtin://data/<file>` -> the bundled file's local path; any other URI unchanged."""
    if not uri.startswith("builtin://"):
        return uri
    if not uri.startswith(BUILTIN_DATA_PREFIX):
        raise StageInputError(f"{uri}: builtin data URIs look like {BUILTIN_DATA_PREFIX}<file>")
    name = uri.removeprefix(BUILTIN_DATA_PREFIX)
    path = BUILTIN_DATA_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        known = ", ".join(sorted(p.name for p in BUILTIN_DATA_DIR.glob("*.jsonl")))
        raise StageInputError(f"{uri}: no such builtin data file (known: {known})")
    return str(path)


def builtin_data_files() -> list[str]:
    """The URIs of the bundled data files."""
    return [BUILTIN_DATA_PREFIX + p.name for p in sorted(BUILTIN_DATA_DIR.glob("*.jsonl"))]


def read_records(uri: str) -> list[dict]:
    return artifacts.read_records(resolve_data_uri(uri))


def where(uri: str, index: int, rec: dict) -> str:
    rid = next((rec[k] for k in ("id", "prompt_id", "uuid") if k in rec), None)
    return f"{uri}: record {index + 1}" + (f" (id {rid})" if rid is not None else "")


def _string(uri: str, index: int, rec: dict, field: str) -> str:
    value = rec.get(field)
    if not isinstance(value, str):
        what = "missing field" if field not in rec else "expected a string in field"
        raise StageInputError(f"{where(uri, index, rec)}: {what} '{field}'")
    return value


def _record_id(uri: str, index: int, rec: dict) -> str:
    for key in ("id", "prompt_id", "uuid"):
        if key in rec:
            if not isinstance(rec[key], str | int) or isinstance(rec[key], bool):
                raise StageInputError(f"{where(uri, index, rec)}: field '{key}' must be a string")
            return str(rec[key])
    raise StageInputError(f"{uri}: record {index + 1}: missing field 'id' (or 'prompt_id')")


def _messages(uri: str, index: int, rec: dict, field: str) -> list[dict]:
    msgs = rec[field]
    if not isinstance(msgs, list) or not msgs:
        raise StageInputError(f"{where(uri, index, rec)}: field '{field}' must be a non-empty "
                              "list of messages")
    out = []
    for j, msg in enumerate(msgs):
        if (not isinstance(msg, dict) or not isinstance(msg.get("role"), str)
                or not isinstance(msg.get("content"), str)):
            raise StageInputError(f"{where(uri, index, rec)}: {field}[{j}] needs string fields "
                                  "'role' and 'content'")
        if msg["role"] not in ("system", "user", "assistant"):
            raise StageInputError(f"{where(uri, index, rec)}: {field}[{j}].role "
                                  f"'{msg['role']}' is not system, user or assistant")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _instruction(uri: str, index: int, rec: dict, field: str) -> str:
    """`instruction` plus the optional `input` (Alpaca style), or a plain prompt field."""
    text = _string(uri, index, rec, field)
    extra = rec.get("input")
    if isinstance(extra, str) and extra.strip():
        text = f"{text}\n\n{extra}"
    return text


# --- prompt sets (sample) -------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def load_prompts(uri: str, limit: int | None = None) -> list[Prompt]:
    """A prompt set keyed by id. Each record has an id and one of: `prompt`, `instruction`
    (+ `input`), `question`, or a message list (`messages`, or the reference's
    `{id: [{"role": "user", ...}]}` which read_records turns into `value`): its user turn."""
    records = read_records(uri)
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        pid = _record_id(uri, i, rec)
        if pid in seen:
            raise StageInputError(f"{uri}: record {i + 1}: duplicate prompt id {pid}")
        seen.add(pid)
        for field in ("prompt", "instruction", "question"):
            if field in rec:
                text = _instruction(uri, i, rec, field)
                break
        else:
            field = next((f for f in ("messages", "value") if f in rec), None)
            if field is None:
                raise StageInputError(f"{where(uri, i, rec)}: missing field 'prompt' (or "
                                      "'instruction', 'question', 'messages')")
            users = [m["content"] for m in _messages(uri, i, rec, field) if m["role"] == "user"]
            if len(users) != 1:
                raise StageInputError(f"{where(uri, i, rec)}: field '{field}' must hold exactly "
                                      f"one user message, found {len(users)}")
            text = users[0]
        if not text.strip():
            raise StageInputError(f"{where(uri, i, rec)}: the prompt is empty")
        prompts.append(Prompt(pid, text))
    if not prompts:
        raise StageInputError(f"{uri}: the prompt set has no prompts")
    return prompts[:limit] if limit else prompts


# --- SFT data ---------------------------------------------------------------------------------

def load_conversations(uri: str) -> list[list[dict]]:
    """SFT examples as chat conversations ending with an assistant turn. Accepted records:
    `{"messages": [...]}`; the reference's `{id: [user, assistant]}` (-> `value`) and its DPO
    records `{"selected": [...]}`; `{"instruction"|"prompt", "input"?, "output"|"response"}`."""
    records = read_records(uri)
    out = []
    for i, rec in enumerate(records):
        field = next((f for f in ("messages", "value", "selected") if f in rec), None)
        if field is not None:
            msgs = _messages(uri, i, rec, field)
        else:
            pfield = next((f for f in ("instruction", "prompt") if f in rec), None)
            rfield = next((f for f in ("output", "response") if f in rec), None)
            if pfield is None or rfield is None:
                missing = "'instruction' (or 'prompt')" if pfield is None else \
                    "'output' (or 'response')"
                raise StageInputError(f"{where(uri, i, rec)}: missing field {missing}, or give "
                                      "'messages'")
            msgs = [{"role": "user", "content": _instruction(uri, i, rec, pfield)},
                    {"role": "assistant", "content": _string(uri, i, rec, rfield)}]
        if msgs[-1]["role"] != "assistant":
            raise StageInputError(f"{where(uri, i, rec)}: the conversation must end with an "
                                  "assistant message (the text to learn)")
        if not any(m["role"] == "user" for m in msgs):
            raise StageInputError(f"{where(uri, i, rec)}: the conversation has no user message")
        out.append(msgs)
    if not out:
        raise StageInputError(f"{uri}: no SFT examples")
    return out


# --- stage outputs: responses, scores, pairs --------------------------------------------------

@dataclass(frozen=True)
class Responses:
    prompt_id: str
    prompt: str
    responses: list[str]


def load_responses(uri: str) -> list[Responses]:
    records = read_records(uri)
    out = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        pid = _string(uri, i, rec, "prompt_id")
        if pid in seen:
            raise StageInputError(f"{uri}: record {i + 1}: duplicate prompt_id {pid}")
        seen.add(pid)
        responses = rec.get("responses")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise StageInputError(f"{where(uri, i, rec)}: field 'responses' must be a list of "
                                  "strings")
        if not responses:
            raise StageInputError(f"{where(uri, i, rec)}: field 'responses' is empty")
        out.append(Responses(pid, _string(uri, i, rec, "prompt"), responses))
    return out


@dataclass(frozen=True)
class Scores:
    prompt_id: str
    logps: list[float]
    lengths: list[int]


def load_scores(uri: str) -> dict[str, Scores]:
    """scores.jsonl keyed by prompt id; every log-prob finite, every length a positive int."""
    out: dict[str, Scores] = {}
    for i, rec in enumerate(read_records(uri)):
        pid = _string(uri, i, rec, "prompt_id")
        if pid in out:
            raise StageInputError(f"{uri}: record {i + 1}: duplicate prompt_id {pid}")
        logps, lengths = rec.get("logps"), rec.get("lengths")
        if not isinstance(logps, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            for x in logps
        ):
            raise StageInputError(f"{where(uri, i, rec)}: field 'logps' must be a list of finite "
                                  "numbers")
        if not isinstance(lengths, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in lengths
        ):
            raise StageInputError(f"{where(uri, i, rec)}: field 'lengths' must be a list of "
                                  "positive integers")
        if len(logps) != len(lengths):
            raise StageInputError(f"{where(uri, i, rec)}: 'logps' has {len(logps)} values but "
                                  f"'lengths' has {len(lengths)}")
        out[pid] = Scores(pid, [float(x) for x in logps], lengths)
    return out


def check_scores_match(responses_uri: str, responses: list[Responses], scores_uri: str,
                       scores: dict[str, Scores]) -> None:
    """The score file covers exactly the responses' prompts, with one score per response."""
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


@dataclass(frozen=True)
class Pair:
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    weight: float
    ref_chosen_logp: float
    ref_rejected_logp: float
    ref_chosen_length: int | None = None
    ref_rejected_length: int | None = None


def load_pairs(uri: str) -> list[Pair]:
    pairs = []
    for i, rec in enumerate(read_records(uri)):
        nums = {}
        for field in ("weight", "ref_chosen_logp", "ref_rejected_logp"):
            value = rec.get(field)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(
                    value):
                what = "missing field" if field not in rec else "expected a finite number in field"
                raise StageInputError(f"{where(uri, i, rec)}: {what} '{field}'")
            nums[field] = float(value)
        if not 0.0 <= nums["weight"] <= 1.0:
            raise StageInputError(f"{where(uri, i, rec)}: field 'weight' must be in [0, 1]")
        lengths = [rec.get(f) if isinstance(rec.get(f), int) else None
                   for f in ("chosen_length", "rejected_length")]
        pairs.append(Pair(_string(uri, i, rec, "prompt_id"), _string(uri, i, rec, "prompt"),
                          _string(uri, i, rec, "chosen"), _string(uri, i, rec, "rejected"),
                          nums["weight"], nums["ref_chosen_logp"], nums["ref_rejected_logp"],
                          *lengths))
    if not pairs:
        raise StageInputError(f"{uri}: no preference pairs")
    return pairs
