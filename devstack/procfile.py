"""Reads deploy/local/Procfile: one process per line, `name: [VAR=value ...] program args`.

`$NAME` and `${NAME}` expand from the environment the supervisor gives every process;
no shell runs, so the supervisor's signals reach the program itself.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from devstack.supervisor import CannotStart

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")


@dataclass(frozen=True)
class Entry:
    name: str
    argv: list[str]
    env: dict[str, str]  # the line's own VAR=value prefix


def parse(text: str, env: Mapping[str, str]) -> list[Entry]:
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        words = [_expand(word, env, number) for word in shlex.split(command)]
        assignments = {}
        while words and _ASSIGNMENT.match(words[0]):
            key, _, value = words.pop(0).partition("=")
            assignments[key] = value
        if not colon or not name.strip() or not words:
            raise CannotStart(f"Procfile line {number} is not `name: command`: {line}")
        entries.append(Entry(name.strip(), words, assignments))
    return entries


def _expand(word: str, env: Mapping[str, str], number: int) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in env:
            raise CannotStart(f"Procfile line {number} uses ${name}, which is not set")
        return env[name]

    return _VARIABLE.sub(value, word)
