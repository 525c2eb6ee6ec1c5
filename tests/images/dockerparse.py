"""Read a Dockerfile's instructions: enough for the image tests (no variable expansion)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # the rest, continuation lines joined
    stage: int  # index of the FROM it belongs to (-1 before the first FROM)
    line: int


def instructions(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    stage, buf, start = -1, "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, value = buf.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, value.strip(), stage, start))
        buf = ""
    return out


def final_stage(path: Path) -> list[Instruction]:
    found = instructions(path)
    last = max(i.stage for i in found)
    return [i for i in found if i.stage == last]


def exec_form(instruction: Instruction) -> list[str]:
    """ENTRYPOINT/CMD in JSON (exec) form; the shell form is refused."""
    value = json.loads(instruction.value)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction
    return value


def last(found: list[Instruction], keyword: str) -> Instruction:
    matching = [i for i in found if i.keyword == keyword]
    assert matching, f"no {keyword}"
    return matching[-1]


def env(found: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs (the `ENV a=1 b=2` form), later ones winning."""
    out: dict[str, str] = {}
    for ins in found:
        if ins.keyword == "ENV":
            for pair in ins.value.split():
                key, sep, value = pair.partition("=")
                assert sep, f"line {ins.line}: use ENV key=value"
                out[key] = value.strip('"')
    return out
