"""The wheel lists every package: images (hack/cluster/build-image, the Dockerfiles) install
the wheel, not the source tree, so a subpackage missing from pyproject.toml's explicit
``packages`` passes every test on an editable install and breaks every pod."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_in_the_wheel() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set()
    for top, where in tool["package-dir"].items():
        base = ROOT / where
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((top, *rel)))
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_the_console_templates_and_vendored_assets_are_package_data() -> None:
    import fnmatch

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["bgq.console"]
    base = ROOT / "worker" / "bgq" / "console"
    files = [p.relative_to(base).as_posix() for d in ("templates", "static")
             for p in (base / d).iterdir()]  # fmt: skip
    assert "static/uPlot.iife.min.js" in files and "static/uPlot.LICENSE" in files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert missing == []


def test_import_bgq_does_not_need_the_console_extra() -> None:
    """The worker image has no Starlette: ``import bgq`` (and the CLI) must not pull it in, and
    ``bgq console`` without the extra says what to install."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'jinja2', 'sse_starlette', 'asgi_csrf'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "import bgq, bgq.cli, bgq.gateway, bgq.decisions\n"
        "sys.exit(bgq.cli.main(['console']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "pip install 'bgq[console]'" in result.stderr
    assert "Traceback" not in result.stderr
