"""The Dockerfile as BuildKit reads it (the ``dockerfile`` package wraps BuildKit's own parser),
and the build context as Docker sends it (``.dockerignore`` applied)."""

from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


@dataclass(frozen=True)
class Stage:
    name: str
    base: str  # the FROM image, global ARGs expanded
    commands: tuple[dockerfile.Command, ...]
    args: dict[str, str]  # ARG defaults in this stage (global ones it redeclares included)

    def runs(self) -> str:
        """Every RUN of the stage, one per line."""
        return "\n".join(" ".join(c.value) for c in self.commands if c.cmd == "RUN")

    def copies(self) -> list[tuple[list[str], str]]:
        """(sources, destination) of each COPY/ADD from the build context (not ``--from``)."""
        out = []
        for c in self.commands:
            if c.cmd in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
                *sources, dest = c.value
                out.append((list(sources), dest))
        return out

    def last(self, instruction: str) -> dockerfile.Command | None:
        found = [c for c in self.commands if c.cmd == instruction]
        return found[-1] if found else None


def expand(text: str, args: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        return args.get(name) or (m.group(2) or "")

    return _VAR.sub(one, text)


def _arg(command: dockerfile.Command) -> tuple[str, str]:
    name, _, default = command.value[0].partition("=")
    return name, default.strip('"')


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    commands = dockerfile.parse_file(str(path))
    global_args: dict[str, str] = {}
    out: list[Stage] = []
    current: list[dockerfile.Command] = []
    head: dockerfile.Command | None = None

    def close() -> None:
        if head is None:
            return
        words = head.value
        name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(out))
        args: dict[str, str] = {}
        for c in current:
            if c.cmd == "ARG":
                key, default = _arg(c)
                args[key] = default or global_args.get(key, "")
        out.append(Stage(name, expand(words[0], global_args), tuple(current), args))

    for c in commands:
        if c.cmd == "FROM":
            close()
            head, current = c, []
        elif head is None and c.cmd == "ARG":
            key, default = _arg(c)
            global_args[key] = default
        else:
            current.append(c)
    close()
    return out


def stage(name: str) -> Stage:
    found = {s.name: s for s in stages()}
    assert name in found, f"the Dockerfile has no stage {name!r}; it has {sorted(found)}"
    return found[name]


# --- .dockerignore: Docker's rules (Go filepath.Match per path element, ** across them, the last
# matching pattern wins, "!" re-includes; a directory excluded excludes what it holds) ---------


def _pattern(text: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(text):
        if text.startswith("**", i):
            out.append(".*")
            i += 2
            if text.startswith("/", i):
                out[-1] = "(?:.*/)?"
                i += 1
            continue
        ch = text[i]
        out.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out))


def ignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    if path.exists():
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            body = line[1:].strip() if keep else line
            rules.append((keep, _pattern(body.strip("/").removeprefix("./"))))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``relative`` (a file path in the context) out of the context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for keep, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            verdict = not keep
    return verdict


def context_files(sources: list[str], root: Path = ROOT) -> Iterator[str]:
    """The files under ``sources`` (paths relative to the context) that Docker sends."""
    rules = ignore_rules(root / ".dockerignore")
    for source in sources:
        base = root / source
        assert base.exists(), f"the Dockerfile copies {source}, which does not exist"
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(root).as_posix()
            if not ignored(rel, rules):
                yield rel


def copy_context(sources: list[str], into: Path, root: Path = ROOT) -> list[str]:
    """Lay out in ``into`` exactly what the Dockerfile's COPY instructions of ``sources`` see."""
    files = list(context_files(sources, root))
    for rel in files:
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return files


# --- what pyproject.toml installs ----------------------------------------------------------


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, str]:
    """Exact pins of the project's dependencies and extras, by normalised package name."""
    doc = pyproject()
    project = doc["project"]
    assert isinstance(project, dict)
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    out = {}
    for line in lines:
        name, _, version = line.partition("==")
        out[re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-")] = version.strip()
    return out


def installed_top_level() -> set[str]:
    """Top-level packages the wheel installs (setuptools' find with pyproject's include)."""
    from setuptools import find_packages

    tool = pyproject()["tool"]
    assert isinstance(tool, dict)
    include = tool["setuptools"]["packages"]["find"]["include"]
    return {p.split(".")[0] for p in find_packages(str(ROOT), include=include)}


def shell_words(text: str) -> list[str]:
    return shlex.split(text, comments=False)
