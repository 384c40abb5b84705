"""Invariants of operator/Dockerfile and worker/Dockerfile.

No Docker engine runs here, so the images cannot be built in the suite; these checks pin what
the chart and the operator rely on: a pinned slim base, a multi-stage build, a non-root numeric
user (uid 10001, as runAsUser in the chart and the worker Deployment), no bytecode writes
(read-only root filesystem) and an exec-form ENTRYPOINT that runs the Python process under
Debian's tini as PID 1 (docs/design.md, "PID 1"): tini forwards SIGTERM to it alone (never -g,
which would also interrupt the children running cpu_bound jobs) and reaps orphans.
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
    program = {"operator": "bgq-operator", "worker": "bgq"}[name]
    assert argv == ["tini", "--", program], f"{path}: ENTRYPOINT {argv}"
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


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_tini_is_installed_in_the_runtime_stage(name: str) -> None:
    """The ENTRYPOINT's tini comes from Debian's package, installed in the final stage, and the
    apt lists are removed in the same layer."""
    steps = instructions(DOCKERFILES[name])
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    runs = [rest for keyword, rest in steps[last_from:] if keyword == "RUN"]
    install = [r for r in runs if re.search(r"apt-get install .*\btini\b", r)]
    assert install, f"{DOCKERFILES[name]}: no `apt-get install tini` in the runtime stage"
    assert "--no-install-recommends" in install[0] and "rm -rf /var/lib/apt/lists" in install[0]


def test_worker_image_default_command_is_the_operators() -> None:
    """`docker run bgq-worker` and the operator's worker pods run the same program under tini."""
    from bgq_operator.manifests import DEFAULT_COMMAND

    steps = instructions(DOCKERFILES["worker"])
    entrypoint = json.loads([r for k, r in steps if k == "ENTRYPOINT"][-1])
    cmd = json.loads([r for k, r in steps if k == "CMD"][-1])
    assert DEFAULT_COMMAND[0] == entrypoint[0] == "tini"
    assert list(DEFAULT_COMMAND[DEFAULT_COMMAND.index("--") + 1:]) == entrypoint[2:] + cmd


def test_the_wheel_lists_every_package() -> None:
    """pyproject.toml names the packages explicitly: a new subpackage missing there is absent
    from the wheel, so every image (Dockerfile and hack/cluster/build-image) would fail with
    ModuleNotFoundError while the editable install of the test suite still works."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, directory in setuptools["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / directory).parts
            found.add(".".join((package, *rel)))
    assert found == set(setuptools["packages"])


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (before the first FROM: the global ARGs, stage 0)."""
    stages: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest))
    return stages


def test_worker_image_takes_extras_as_a_build_arg_empty_by_default() -> None:
    """``--build-arg BGQ_EXTRAS=[console]`` makes the console image (docs/console.md); without it
    the worker image has no console dependencies. The build stage builds the extra's wheels, the
    runtime stage installs ``bgq${BGQ_EXTRAS}`` from them; both redeclare the ARG (a global ARG
    is not visible inside a stage otherwise)."""
    import tomllib

    path = DOCKERFILES["worker"]
    global_args, build, runtime = _stages(path)
    assert ("ARG", 'BGQ_EXTRAS=""') in global_args
    assert ("ARG", "BGQ_EXTRAS") in build and ("ARG", "BGQ_EXTRAS") in runtime
    wheel = [r for k, r in build if k == "RUN" and "pip wheel" in r]
    assert wheel and wheel[0].endswith('".${BGQ_EXTRAS}"'), wheel
    install = [r for k, r in runtime if k == "RUN" and "pip install" in r]
    assert install and '--no-index --find-links=/wheels "bgq${BGQ_EXTRAS}"' in install[0]
    # the extra the header names exists, and is the one hack/cluster/build-image console uses
    header = path.read_text()
    assert "--build-arg BGQ_EXTRAS=[console]" in header
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "console" in extras["optional-dependencies"]
    assert "BGQ_EXTRAS=[console]" in (ROOT / "hack" / "cluster" / "build-image").read_text()
