"""``@bgq.task``: declare a function as a task and choose how it runs.

``async def`` tasks run on the worker's event loop; plain ``def`` tasks in a bounded thread
pool; ``cpu_bound=True`` tasks in a child process (a hard timeout kills the child). Calling the
decorated object calls the function directly (handy in tests); enqueue it by passing it (or
its name) to a client.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from bgq.errors import ConfigError, UnknownTask

P = ParamSpec("P")
R = TypeVar("R")

_REGISTRY: dict[str, Task[Any, Any]] = {}


class Task(Generic[P, R]):
    """A registered task: the function plus its execution policy."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str,
        retries: int | None,
        timeout: float | None,
        retry_on: tuple[type[BaseException], ...],
        cpu_bound: bool,
    ) -> None:
        self.fn = fn
        self.task_name = name
        self.retries = retries
        self.timeout = timeout
        self.retry_on = retry_on
        self.cpu_bound = cpu_bound
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = getattr(fn, "__module__", "")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<bgq task {self.task_name!r}>"


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    cpu_bound: bool = False,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    cpu_bound: bool = False,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Register a task. ``@bgq.task`` or ``@bgq.task(retries=3, timeout=30, ...)``.

    - ``name``: the name producers use (default: the function's ``__name__``); unique per worker.
    - ``retries``: failed attempts retried before the job goes to the dead letters
      (default ``BGQ_DEFAULT_MAX_RETRIES``; a job's own ``retries`` option wins).
    - ``timeout``: seconds (default ``BGQ_DEFAULT_TIMEOUT_SECONDS``). Async tasks are cancelled,
      thread tasks are abandoned and told via ``current_job().cancel_requested``, process tasks
      are killed.
    - ``retry_on``: exception types that are retried; any other exception dead-letters at once.
    - ``cpu_bound``: run in a child process so CPU-heavy code never starves the event loop.
    """

    def register(f: Callable[P, R]) -> Task[P, R]:
        if not callable(f):
            raise ConfigError(f"@bgq.task needs a function, got {type(f).__name__}")
        if cpu_bound and inspect.iscoroutinefunction(f):
            raise ConfigError(f"task {f.__name__}: cpu_bound tasks must be plain 'def' functions")
        if retries is not None and retries < 0:
            raise ConfigError(f"task {f.__name__}: retries must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"task {f.__name__}: timeout must be > 0 seconds")
        bad = [t for t in retry_on if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad:
            raise ConfigError(f"task {f.__name__}: retry_on must hold exception types, got {bad}")
        task_name = name or f.__name__
        t = Task(
            f,
            name=task_name,
            retries=retries,
            timeout=timeout,
            retry_on=tuple(retry_on),
            cpu_bound=cpu_bound,
        )
        old = _REGISTRY.get(task_name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (
            f.__module__,
            f.__qualname__,
        ):
            raise ConfigError(
                f"task name {task_name!r} is already registered by "
                f"{old.fn.__module__}.{old.fn.__qualname__}: give one of them name=..."
            )
        _REGISTRY[task_name] = t
        return t

    if fn is not None:
        return register(fn)
    return register


def lookup(name: str) -> Task[Any, Any]:
    """The task registered as ``name``; raises :class:`UnknownTask`."""
    t = _REGISTRY.get(name)
    if t is None:
        known = ", ".join(sorted(_REGISTRY)[:20]) or "none"
        raise UnknownTask(
            f"no task named {name!r} is registered in this worker (known: {known}); "
            "is the tasks module (BGQ_TASKS_MODULE) the right one and up to date?"
        )
    return t


def registry() -> dict[str, Task[Any, Any]]:
    """A copy of the registry (name -> task)."""
    return dict(_REGISTRY)


__all__ = ["Task", "lookup", "registry", "task"]
