"""The demo's closing figures (hack/demo/bgqdemo/summary.py), from hand-made samples and job
records: what counts as lost and interrupted, the percentiles, replica-seconds, and when the
queue reached zero."""

from __future__ import annotations

from bgqdemo.summary import JobRecord, Sample, percentile, replica_seconds, summarize, zero_time


def job(i: int, **kw: object) -> JobRecord:
    fields: dict[str, object] = {
        "id": f"j{i}", "state": "succeeded", "attempt": 1, "enqueued_ms": 1_000_000,
        "finished_ms": 1_002_000 + i * 100, "starts": 1, "ends": 1, "waited_ms": 100 + i,
    }
    fields.update(kw)
    return JobRecord(**fields)  # type: ignore[arg-type]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile([7.0], 95) == 7
    assert percentile([], 50) is None


def test_replica_seconds_hold_each_sample_until_the_next() -> None:
    samples = [Sample(t=0, pods=0), Sample(t=1, pods=3), Sample(t=3, pods=1), Sample(t=4, pods=0)]
    assert replica_seconds(samples) == 0 * 1 + 3 * 2 + 1 * 1


def test_zero_time_is_the_first_sample_of_the_final_stretch_without_pods() -> None:
    samples = [Sample(t=10, pods=2, replicas=2), Sample(t=11, pods=0, replicas=0),
               Sample(t=12, pods=1, replicas=1), Sample(t=13, pods=1, replicas=0),
               Sample(t=14, pods=0, replicas=0), Sample(t=15, pods=0, replicas=0)]
    assert zero_time(samples, after=10.5) == 14
    assert zero_time(samples[:4], after=10.5) is None  # pods came back: not at zero


def test_a_clean_run_has_nothing_lost_or_interrupted() -> None:
    jobs = [job(i) for i in range(10)] + [job(10, attempt=2, starts=2, ends=2)]
    samples = [Sample(t=999, pods=0), Sample(t=1000, pods=2, replicas=2),
               Sample(t=1003, pods=2, replicas=2), Sample(t=1008, pods=0, replicas=0)]
    s = summarize("burst", jobs, samples, via_client=6, via_gateway=5, started_at=1000.0)
    assert (s.jobs_enqueued, s.jobs_run, s.succeeded, s.lost, s.interrupted) == (11, 11, 11, 0, 0)
    assert s.retried == 1
    assert s.enqueue_to_start_p50_ms == 105
    assert s.max_replicas == 2
    assert s.replica_seconds == 2 * 3 + 2 * 5
    # the last job finished at 1003.0 s, the first sample without pods is 1008
    assert s.last_job_to_zero_s == 5.0
    assert s.scaled_to_zero
    assert s.duration_s == 3.0
    assert s.jobs_per_second == round(11 / 3, 1)


def test_unfinished_runs_expired_leases_and_missing_jobs_are_counted() -> None:
    jobs = [
        job(0),
        job(1, starts=2, ends=1),  # a run cut short, then retried and finished
        job(2, lease_expiries=1, starts=1, ends=1),  # a worker vanished holding it
        job(3, state="", starts=0, ends=0, waited_ms=None, finished_ms=0),  # gone
        job(4, state="dead"),
    ]
    s = summarize("drain", jobs, [Sample(t=1000, pods=1, replicas=1)], via_client=5,
                  via_gateway=0, started_at=1000.0)
    assert s.lost == 2 and s.lost_ids == ["j3", "j4"]
    assert s.interrupted == 2 and s.interrupted_ids == ["j1", "j2"]
    assert s.jobs_run == 4
    assert not s.scaled_to_zero and s.last_job_to_zero_s is None


def test_finished_while_draining_counts_jobs() -> None:
    jobs = [job(0, drained=1), job(1), job(2, drained=1)]
    s = summarize("drain", jobs, [], via_client=3, via_gateway=0, started_at=1000.0)
    assert s.finished_while_draining == 2
    assert s.as_dict()["finished_while_draining"] == 2
