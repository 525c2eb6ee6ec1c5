"""Reading the user's data files (prompt sets, SFT data), in our formats and the reference
project's, failing loudly.

Every error names the file (URI), the record and the field. The files stages write for each other
are records.py's. A `gen://` URI is a generated task set (generated_tasks.py), read like a file.
No torch here: the operator's CLI uses validate_data_uri to check specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import artifacts, generated_tasks
from .contract import StageInputError

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


def validate_data_uri(uri: str) -> None:
    """StageInputError when a data URI that can be checked from here names nothing: a local or
    builtin file that does not exist, a malformed gen:// URI. s3:// is left to the stages (it
    needs credentials), and nothing is generated or read."""
    if generated_tasks.is_generated(uri):
        generated_tasks.parse_uri(uri)
    elif not artifacts.is_s3(uri) and not Path(resolve_data_uri(uri)).is_file():
        raise StageInputError(f"{uri}: no such file")


def read_records(uri: str) -> list[dict]:
    if generated_tasks.is_generated(uri):
        return generated_tasks.generate(uri)
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
    records `{"selected": [...]}`; `{"instruction"|"prompt", "input"?, "output"|"response"}`;
    GSM8K's `{"question", "answer"}` (so a gen://arithmetic set is SFT data too)."""
    records = read_records(uri)
    out = []
    for i, rec in enumerate(records):
        field = next((f for f in ("messages", "value", "selected") if f in rec), None)
        if field is not None:
            msgs = _messages(uri, i, rec, field)
        else:
            pfield = next((f for f in ("instruction", "prompt", "question") if f in rec), None)
            rfield = next((f for f in ("output", "response", "answer") if f in rec), None)
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
