"""Read a Dockerfile's instructions: enough for the image tests (no variable expansion)."""

from __future__ import annotations

import json
import re
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


def global_args(path: Path) -> dict[str, str]:
    """ARG defaults before the first FROM (what FROM lines may use)."""
    out = {}
    for ins in instructions(path):
        if ins.stage >= 0:
            break
        if ins.keyword == "ARG" and "=" in ins.value:
            key, _, value = ins.value.partition("=")
            out[key] = value.strip('"')
    return out


def _stage_names(found: list[Instruction]) -> dict[str, int]:
    names = {}
    for ins in found:
        if ins.keyword == "FROM":
            words = ins.value.split()
            if len(words) == 3 and words[1].upper() == "AS":
                names[words[2]] = ins.stage
    return names


def final_stage(path: Path, target: str | None = None) -> list[Instruction]:
    """What an image built to `target` (default: the last stage) is made of: that stage's
    instructions after those of the earlier stages it is built FROM, in order."""
    found = instructions(path)
    names = _stage_names(found)
    index = names[target] if target else max(i.stage for i in found)
    chain = []
    while index is not None:
        chain.insert(0, index)
        base = next(i for i in found if i.stage == index and i.keyword == "FROM").value.split()[0]
        index = names.get(base)
    return [i for i in found if i.stage in chain]


def base_images(path: Path) -> list[str]:
    """The images the stages are built FROM, build-argument defaults expanded; a FROM that
    names an earlier stage is left out."""
    found = instructions(path)
    names = _stage_names(found)
    args = global_args(path)
    out = []
    for ins in found:
        if ins.keyword == "FROM":
            image = ins.value.split()[0]
            if image not in names:
                out.append(re.sub(r"\$\{(\w+)\}|\$(\w+)",
                                  lambda m: args[m.group(1) or m.group(2)], image))
    return out


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
