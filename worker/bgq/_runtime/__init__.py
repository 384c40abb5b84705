"""The worker runtime's parts (private; the public entry is :mod:`bgq.worker`).

One concern per module, composed by :class:`bgq.worker.Worker`:

* :mod:`.outcome` -- the pure decision how a job's run ends (retry, dead, release, ...);
* :mod:`.jobs` -- the jobs this worker holds (fetched, running, not yet settled);
* :mod:`.fetcher` -- batched fetches sized to free slots, blocking reads when idle;
* :mod:`.executor` -- runs one job in its runtime (async, thread, child process), timeouts;
* :mod:`.settler` -- the settle buffer: coalesced, fenced completions;
* :mod:`.keeper` -- lease renewal and the heartbeat record;
* :mod:`.drain` -- the shutdown clock and the drain state machine;
* :mod:`.probes` -- /livez, /readyz, /metrics;
* :mod:`.signals` -- SIGTERM/SIGINT honoured from the first instruction of the entry point.
"""
