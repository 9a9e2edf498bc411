"""A small reader of the repository's Containerfile, for the tests that check it against the
gateway and run its install steps: instructions (continuations joined, comments dropped, as the
engines read them), their `--flag=value` options, and the stages they belong to."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parents[1]
CONTAINERFILE = ROOT / "Containerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: `RUN`, `COPY`, `HEALTHCHECK`…"""
    flags: dict[str, str]
    """`--mount=type=bind,…` → `{"mount": "type=bind,…"}`."""
    rest: str
    """What follows the keyword and its flags."""
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (`CMD ["hestia", …]`)."""
        value = json.loads(self.rest)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value

    def words(self) -> list[str]:
        return shlex.split(self.rest)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"{keyword}: {len(found)} in stage {self.name or self.base}"
        return found[0]


def instructions(text: str) -> list[Instruction]:
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # a comment, even inside a continuation, is not part of the instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        found.append(_instruction(" ".join(p for p in pending if p), start))
        pending = []
    assert not pending, "the file ends inside a continuation"
    return found


def _instruction(text: str, line: int) -> Instruction:
    keyword, _, rest = text.partition(" ")
    flags: dict[str, str] = {}
    while (match := re.match(r"--([a-z-]+)=(\S+)\s*", rest)) is not None:
        flags[match[1]] = match[2]
        rest = rest[match.end():]
    return Instruction(keyword.upper(), flags, rest.strip(), line)


def stages(path: Path = CONTAINERFILE) -> list[Stage]:
    result: list[Stage] = []
    for instruction in instructions(path.read_text()):
        if instruction.keyword == "FROM":
            words = instruction.words()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(words[0], name))
        else:
            assert result, f"line {instruction.line}: an instruction before FROM"
            result[-1].instructions.append(instruction)
    return result


def mount_options(value: str) -> dict[str, str]:
    """`type=bind,from=build,source=/wheels,target=/wheels` as a mapping."""
    return dict(part.split("=", 1) for part in value.split(","))


DOCKERIGNORE = ROOT / ".dockerignore"


def _matches(pattern: str, path: str) -> bool:
    """Whether a .dockerignore pattern names `path` (posix, relative) or a directory above it.
    `**/` also matches no directory at all, as in the engines' own matching."""
    candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    # fnmatch's `*` crosses `/`; a pattern without `**` is matched one level at a time.
    return any(
        fnmatch.fnmatchcase(prefix, candidate) and (
            "**" in pattern or prefix.count("/") == candidate.count("/"))
        for candidate in candidates for prefix in prefixes)


def in_build_context(path: str) -> bool:
    """Whether `.dockerignore` lets `path` into the build context: the last pattern that
    matches decides, a `!` pattern letting it in."""
    included = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if _matches(pattern, path):
            included = negated
    return included


def context_files(source: str) -> list[str]:
    """The files a `COPY source …` takes from the build context, relative to the root."""
    base = ROOT / source
    paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    return [rel for p in paths if in_build_context(rel := p.relative_to(ROOT).as_posix())]
