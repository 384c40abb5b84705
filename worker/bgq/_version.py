"""The installed distribution's version: one source of truth, pyproject.toml's ``version``."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("bgq")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
