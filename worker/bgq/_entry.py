"""The ``bgq`` console script: as light as possible before it knows what to run.

``bgq worker`` must honour a SIGTERM that arrives while the interpreter is still importing
(the pod may be scaled down in its first instant): the recording handler of
:mod:`bgq._runtime.signals` is installed here, before :mod:`bgq.cli` and its dependencies are
imported. Other commands keep Python's default signal behaviour (Ctrl-C interrupts them).
"""

from __future__ import annotations

import sys


def main() -> int:
    """Dispatch to :func:`bgq.cli.main`, capturing stop signals first for ``bgq worker``."""
    if sys.argv[1:2] == ["worker"]:
        from bgq._runtime import signals

        signals.capture()
    from bgq.cli import main as cli_main

    return cli_main()


__all__ = ["main"]
