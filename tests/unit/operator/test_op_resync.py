"""Which queues the periodic resync reconciles (a healthy, verified queue costs nothing)."""

from __future__ import annotations

import pytest

from bgq_operator.autoscaler import _adopt_scale
from bgq_operator.reconcile import VERIFY_S, needs_resync
from bgq_operator.state import DeploymentView, Problem, QueueState

NOW = 10_000.0


def healthy() -> QueueState:
    state = QueueState("shop", "orders", uid="u")
    state.deployment = DeploymentView(replicas=0, generation=4)
    state.written_generation = 4
    state.applied = (4, "{manifest}", NOW - 5)
    state.redis_checked = True
    return state


def test_a_healthy_verified_queue_is_skipped() -> None:
    assert not needs_resync(healthy(), NOW)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda s: setattr(s, "problem", Problem("SecretMissing", "no secret")),
        lambda s: setattr(s, "redis_error", "cannot reach Redis"),
        lambda s: setattr(s, "redis_checked", False),
        lambda s: setattr(s, "deployment", None),
        lambda s: setattr(s, "applied", None),
        lambda s: setattr(s, "deployment", DeploymentView(replicas=2, generation=5)),  # scaled
        lambda s: setattr(s, "applied", (4, "{manifest}", NOW - VERIFY_S)),  # verify again
    ],
    ids=["problem", "redis-error", "redis-unchecked", "no-deployment", "never-verified",
         "generation-moved", "verification-old"],
)
def test_anything_unsettled_is_reconciled(spoil: object) -> None:
    state = healthy()
    spoil(state)  # type: ignore[operator]
    assert needs_resync(state, NOW)


def test_our_own_scale_write_keeps_the_queue_verified() -> None:
    """The autoscaler's replicas write (generation 4 -> 5, nothing else in between) leaves the
    manifest as verified: the resync does not GET and dry-run the Deployment it just scaled."""
    state = healthy()
    _adopt_scale(state, base=4, target=3, generation=5)
    assert state.deployment == DeploymentView(replicas=3, generation=5)
    assert state.written_generation == 5
    assert state.applied == (5, "{manifest}", NOW - 5)
    assert not needs_resync(state, NOW)


def test_a_write_by_someone_else_before_ours_leaves_the_queue_unverified() -> None:
    state = healthy()
    _adopt_scale(state, base=4, target=3, generation=6)  # 5 was someone else's
    assert state.applied == (4, "{manifest}", NOW - 5)
    assert needs_resync(state, NOW)


def test_a_newer_generation_from_the_watch_is_not_overwritten() -> None:
    """The watch showed generation 6 (an edit after ours) before our response (5) came back:
    the view stays at 6, newer than ``written_generation``, for the watch's repair."""
    state = healthy()
    state.deployment = DeploymentView(replicas=3, generation=6)
    _adopt_scale(state, base=4, target=3, generation=5)
    assert state.deployment.generation == 6
    assert state.written_generation == 5
    assert needs_resync(state, NOW)
