"""Invariants of operator/Dockerfile and worker/Dockerfile.

No Docker engine runs here, so the images cannot be built in the suite; these checks pin what
the chart and the operator rely on: a pinned slim base, a multi-stage build, a non-root numeric
user (uid 10001, as runAsUser in the chart and the worker Deployment), no bytecode writes
(read-only root filesystem) and an exec-form ENTRYPOINT so the Python process is PID 1 and gets
SIGTERM itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from chart_helpers import ROOT

DOCKERFILES = {
    "operator": ROOT / "operator" / "Dockerfile",
    "worker": ROOT / "worker" / "Dockerfile",
    "example": ROOT / "examples" / "Dockerfile",
}
PROJECT_IMAGES = ["operator", "worker"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def resolve_from(path: Path) -> list[str]:
    """Base images of every FROM, with ``ARG`` defaults substituted."""
    args: dict[str, str] = {}
    bases = []
    for keyword, rest in instructions(path):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args.setdefault(name, value)
        elif keyword == "FROM":
            image = rest.split()[0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image))
    return bases


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_multi_stage_on_a_pinned_slim_python(name: str) -> None:
    path = DOCKERFILES[name]
    bases = resolve_from(path)
    assert len(bases) >= 2, f"{path}: expected a build stage and a runtime stage"
    for base in bases:
        repo, _, tag = base.partition(":")
        assert repo in {"python", "docker.io/library/python"}, base
        assert re.fullmatch(r"3\.1[1-9]\.\d+-slim(-\w+)?", tag), f"{path}: unpinned base {base}"
    # the runtime stage takes only the build stage's wheels
    assert any("from=build" in r for k, r in instructions(path) if k in {"COPY", "RUN"})


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    path = DOCKERFILES[name]
    users = [rest for keyword, rest in instructions(path) if keyword == "USER"]
    if name == "example":
        assert not users or users[-1].split(":")[0] not in {"0", "root"}
        return
    assert users, f"{path} has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, f"{path}: USER {users[-1]} (expected 10001)"


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_entrypoint_is_exec_form_and_no_bytecode_is_written(name: str) -> None:
    path = DOCKERFILES[name]
    steps = instructions(path)
    entrypoints = [rest for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert entrypoints, f"{path} has no ENTRYPOINT"
    argv = json.loads(entrypoints[-1])  # shell form would not be JSON
    assert isinstance(argv, list) and argv and argv[0] not in {"sh", "/bin/sh", "bash"}
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env  # anything that writes to $HOME lands on the writable /tmp


def test_worker_image_is_extensible_at_app() -> None:
    steps = instructions(DOCKERFILES["worker"])
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "PYTHONPATH=/app" in env
    assert ("WORKDIR", "/app") in steps
    example = instructions(DOCKERFILES["example"])
    assert any(k == "COPY" and "/app/" in r for k, r in example)
    assert any(k == "ENV" and "BGQ_TASKS_MODULE=" in r for k, r in example)


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines  # deny everything, then allow what the builds copy
    for needed in ("pyproject.toml", "README.md", "worker/bgq/**", "operator/bgq_operator/**"):
        assert f"!{needed}" in lines
