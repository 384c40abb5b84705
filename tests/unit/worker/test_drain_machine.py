"""The drain state machine and its clock, without Redis."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bgq._runtime.drain import (
    CANCEL_GRACE_SECONDS,
    TEARDOWN_SECONDS,
    DrainFacts,
    Phase,
    ShutdownClock,
    next_phase,
)

CLOCK = ShutdownClock(requested_at=100.0, drain_seconds=10.0)


def f(now: float, running: int = 0, forced: bool = False, fetched: bool = True) -> DrainFacts:
    return DrainFacts(now, running, forced, fetched)


def test_clock_deadlines() -> None:
    assert CLOCK.job_deadline == 110.0
    assert CLOCK.hard_deadline == 110.0 + TEARDOWN_SECONDS
    assert CLOCK.left(200.0) == 0.0
    assert CLOCK.cancel_grace(110.0) == CANCEL_GRACE_SECONDS
    # close to the hard deadline the grace shrinks so the final calls still fit
    assert CLOCK.cancel_grace(CLOCK.hard_deadline - 1.5) == 0.5
    assert CLOCK.cancel_grace(CLOCK.hard_deadline - 0.5) == 0.0


def test_the_whole_shutdown_fits_the_operators_grace_period() -> None:
    # the operator sets terminationGracePeriodSeconds = drainSeconds + 5
    assert TEARDOWN_SECONDS < 5.0


def test_happy_path_order() -> None:
    seq = [Phase.STOP_FETCHING]
    facts = [f(101), f(102, running=1), f(103, running=0), f(103.1), f(103.2), f(103.3)]
    for fact in facts:
        seq.append(next_phase(seq[-1], fact, CLOCK))
        if seq[-1] is Phase.DONE:
            break
    assert seq == [
        Phase.STOP_FETCHING,
        Phase.HAND_BACK,
        Phase.WAIT_RUNNING,
        Phase.FINAL_FLUSH,
        Phase.RELEASE_ORPHANS,
        Phase.DONE,
    ]


def test_a_stop_before_anything_was_fetched_ends_at_once() -> None:
    assert next_phase(Phase.STOP_FETCHING, f(100.1, fetched=False), CLOCK) is Phase.DONE


def test_waiting_ends_at_the_job_deadline_or_a_second_signal() -> None:
    assert next_phase(Phase.WAIT_RUNNING, f(105, running=2), CLOCK) is Phase.WAIT_RUNNING
    assert next_phase(Phase.WAIT_RUNNING, f(110, running=2), CLOCK) is Phase.CANCEL_RUNNING
    assert next_phase(Phase.WAIT_RUNNING, f(101, 2, forced=True), CLOCK) is Phase.CANCEL_RUNNING
    assert next_phase(Phase.CANCEL_RUNNING, f(111), CLOCK) is Phase.FINAL_FLUSH


@given(
    phase=st.sampled_from(list(Phase)),
    late=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    running=st.integers(min_value=0, max_value=100),
    forced=st.booleans(),
    fetched=st.booleans(),
)
def test_past_the_hard_deadline_every_phase_goes_to_done(
    phase: Phase, late: float, running: int, forced: bool, fetched: bool
) -> None:
    facts = DrainFacts(CLOCK.hard_deadline + late, running, forced, fetched)
    assert next_phase(phase, facts, CLOCK) is Phase.DONE


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=0.5, allow_nan=False),
            st.integers(min_value=0, max_value=3),
            st.booleans(),
        ),
        min_size=1,
        max_size=400,
    )
)
def test_the_machine_always_terminates_and_never_goes_backwards(
    steps: list[tuple[float, int, bool]],
) -> None:
    order = list(Phase)
    phase, now = Phase.STOP_FETCHING, CLOCK.requested_at
    for dt, running, forced in steps:
        now += dt
        nxt = next_phase(phase, DrainFacts(now, running, forced, True), CLOCK)
        assert order.index(nxt) >= order.index(phase)
        phase = nxt
    # time always passes: at the hard deadline it is over, whatever the jobs do
    assert next_phase(phase, DrainFacts(CLOCK.hard_deadline, 3, False, True), CLOCK) is Phase.DONE
