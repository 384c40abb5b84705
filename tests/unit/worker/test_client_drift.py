"""``Client`` and ``AsyncClient`` offer the same API: the blocking one is generated from the
asyncio one (hack/gen-sync-client; ``make lint`` runs ``--check``), and this test compares
their public signatures so a drift fails even if the generator were bypassed."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from bgq import AsyncClient, Client

ROOT = Path(__file__).resolve().parents[3]


def public(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") or name in ("__init__",)
    }


def test_same_public_methods_and_parameters() -> None:
    sync, aio = public(Client), public(AsyncClient)
    assert sorted(sync) == sorted(aio)
    for name, member in aio.items():
        other = sync[name]
        if isinstance(member, property):
            assert isinstance(other, property), name
            continue
        a, s = inspect.signature(member), inspect.signature(other)  # type: ignore[arg-type]
        assert list(a.parameters) == list(s.parameters), name
        for p in a.parameters.values():
            q = s.parameters[p.name]
            assert (p.kind, p.default) == (q.kind, q.default), (name, p.name)
        if name != "__init__":
            assert inspect.iscoroutinefunction(member), name
            assert not inspect.iscoroutinefunction(other), name


def test_context_managers_both_ways() -> None:
    assert hasattr(Client, "__enter__") and hasattr(Client, "__exit__")
    assert hasattr(AsyncClient, "__aenter__") and hasattr(AsyncClient, "__aexit__")


def test_generated_module_is_up_to_date() -> None:
    subprocess.run([sys.executable, str(ROOT / "hack" / "gen-sync-client"), "--check"],
                   check=True, timeout=120)
