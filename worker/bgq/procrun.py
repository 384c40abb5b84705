"""Run ``cpu_bound`` tasks in child processes, one per job, so they can be killed.

A process pool cannot kill one job that overruns its timeout without killing the pool; bgq
starts a child per job from a ``forkserver`` (cheap, and safe in a threaded parent), bounds
how many run at once, and kills the child on timeout, on cancellation and at the drain
deadline. CPU-heavy code therefore never starves the worker's event loop (lease renewal,
heartbeats, probes). The child imports the task's module, so the task must live in an
importable module. Results and errors cross the pipe; arguments and results are the job's
JSON values. So do the task's ``progress()`` and ``checkpoint()`` reports: a thread in the
child sends them, coalesced (at most one message per ``FORWARD_SECONDS``), the parent puts
them on the job's context, and the lease keeper stores them with its next renewal exactly as
for an async or thread task; a checkpoint thus also survives a drain hand-back.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing
import multiprocessing.connection
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from bgq.errors import BgqError

if TYPE_CHECKING:
    from collections.abc import Callable

    from bgq.context import JobContext

STARTUP_SECONDS = 60.0
"""How long a child may take to start and import the task's module."""
FORWARD_SECONDS = 0.2
"""A child sends the task's progress/checkpoint reports at most this often (coalesced)."""


class _Forwarder:
    """In the child: sends the job's pending progress and checkpoint to the parent.

    ``JobContext`` calls :meth:`wake` after each report; the thread sends whatever is pending
    (one message for any number of reports), then waits ``FORWARD_SECONDS``. Taking the
    updates and sending them happen under the pipe's lock, and :meth:`close` sends the rest
    under it too before the result goes, so no report can arrive after the result.
    """

    def __init__(self, ctx: JobContext, conn: multiprocessing.connection.Connection,
                 lock: threading.Lock) -> None:  # fmt: skip
        self.ctx, self.conn, self.lock = ctx, conn, lock
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="bgq-progress", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def flush(self) -> None:
        with self.lock:
            if self.ctx.has_updates and not self.conn.closed:
                progress, checkpoint = self.ctx.take_updates()
                self.conn.send(("update", progress, checkpoint))

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            with contextlib.suppress(OSError, ValueError):  # the parent went away
                self.flush()
            time.sleep(FORWARD_SECONDS)


class TaskProcessError(BgqError):
    """A task's child process died or its error could not be carried back."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        self.remote_traceback = remote_traceback
        super().__init__(message)


def _child_main(  # noqa: PLR0917 - a Process target takes positional args
    module: str,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    ctx_fields: dict[str, Any],
    conn: multiprocessing.connection.Connection,
) -> None:
    """Entry point in the child: import, run, send ``("ok", result)`` or ``("err", exc, tb)``."""
    from bgq.context import JobContext, set_current
    from bgq.task import lookup

    lock = threading.Lock()
    forwarder: _Forwarder | None = None
    try:
        importlib.import_module(module)
        task = lookup(name)
        ctx = JobContext(**ctx_fields)
        forwarder = _Forwarder(ctx, conn, lock)
        ctx._notify = forwarder.wake  # the child's own context: reports go to the parent
        set_current(ctx)
        conn.send(("started", None))
        result = task.fn(*args, **kwargs)
        forwarder.close()
        with lock:
            conn.send(("ok", result))
    except BaseException as exc:
        tb = traceback.format_exc()
        if forwarder is not None:
            with contextlib.suppress(Exception):
                forwarder.close()
        with lock:
            try:
                conn.send(("err", exc, tb))
            except Exception:  # the exception does not pickle: carry its text
                conn.send(("err", TaskProcessError(f"{type(exc).__name__}: {exc}", tb), tb))
    finally:
        with lock:
            conn.close()


class ProcessRunner:
    """Bounded concurrent child processes for cpu_bound tasks."""

    def __init__(self, size: int) -> None:
        self._sem = asyncio.Semaphore(size)
        self._mp = multiprocessing.get_context("forkserver")

    async def run(
        self,
        *,
        module: str,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        ctx_fields: dict[str, Any],
        time_limit: float,
        on_update: Callable[[str, str], None] | None = None,
    ) -> Any:
        """Run the task in a child; raise TimeoutError (child killed) or the task's error.

        ``on_update(progress, checkpoint)`` receives the task's forwarded reports."""
        loop = asyncio.get_running_loop()
        async with self._sem:
            recv, send = self._mp.Pipe(duplex=False)
            proc = self._mp.Process(
                target=_child_main,
                args=(module, name, args, kwargs, ctx_fields, send),
                daemon=True,
                name=f"bgq-task-{name}",
            )
            await loop.run_in_executor(None, proc.start)
            send.close()
            ready: asyncio.Future[None] = loop.create_future()

            def on_readable() -> None:
                if not ready.done():
                    ready.set_result(None)

            async def receive() -> Any:
                nonlocal ready
                # poll(): the reader callback can fire for data an earlier recv() consumed
                while not recv.poll():
                    await ready
                    ready = loop.create_future()
                try:
                    return recv.recv()
                except EOFError:
                    await loop.run_in_executor(None, proc.join, 5)
                    raise TaskProcessError(
                        f"the child process running task {name!r} died with exit code "
                        f"{proc.exitcode} before returning (killed by the OOM killer?)"
                    ) from None

            loop.add_reader(recv.fileno(), on_readable)
            try:
                async with asyncio.timeout(STARTUP_SECONDS):
                    message = await receive()
                if message[0] == "started":
                    # the time limit covers the task itself, not the child's start-up
                    async with asyncio.timeout(time_limit):
                        message = await receive()
                        while message[0] == "update":
                            if on_update is not None:
                                on_update(message[1], message[2])
                            message = await receive()
            except BaseException:
                proc.kill()
                raise
            finally:
                loop.remove_reader(recv.fileno())
                recv.close()
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(None, proc.join, 5)
                with contextlib.suppress(Exception):
                    proc.close()
            if message[0] == "ok":
                return message[1]
            exc = message[1]
            if isinstance(exc, BaseException):
                exc.__bgq_remote_traceback__ = message[2]  # type: ignore[attr-defined]
                raise exc
            raise TaskProcessError(str(exc), message[2])


__all__ = ["ProcessRunner", "TaskProcessError"]
