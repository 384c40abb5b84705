"""JSON with limits: hostile documents become a :class:`bgq.PayloadError`, never a crash.

Python's :mod:`json` turns an array nested ~1,000 deep into a ``RecursionError`` and an integer of
more than 4,300 digits into a bare ``ValueError``; it also accepts ``NaN`` and ``Infinity``, which
are not JSON. Every document bgq takes from outside (a gateway body, a CLI option) and every job
payload a client writes goes through the checks here, so the same document is accepted or refused
the same way everywhere, with a message that says which limit was hit.

The limits are part of the protocol (``docs/protocol.md``): a job's envelope nests at most
:data:`MAX_DEPTH` levels and holds no integer over :data:`MAX_INT_DIGITS` decimal digits.
"""

from __future__ import annotations

import json
from typing import Any

from bgq.errors import PayloadError

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "check", "loads"]

MAX_DEPTH = 64
"""Deepest nesting of arrays/objects in a job envelope (the envelope object itself is level 1)."""
MAX_INT_DIGITS = 100
"""Longest integer (decimal digits, sign excluded); far beyond what other languages can hold."""
_MAX_INT_BITS = 333  # 2**332 has 100 digits, 2**333 has 101: count digits only at 333 bits


def _parse_int(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        raise PayloadError(
            f"an integer has {digits} digits, at most {MAX_INT_DIGITS} are allowed: "
            "send big numbers as strings"
        )
    return int(text)


def _parse_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not valid JSON: send finite numbers only")


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH, what: str = "body") -> Any:
    """Parse ``data`` as JSON within the limits.

    Raises :class:`bgq.PayloadError` (naming ``what``) for nesting deeper than ``max_depth``, an
    integer over :data:`MAX_INT_DIGITS` digits, or ``NaN``/``Infinity``; malformed JSON raises
    :class:`json.JSONDecodeError` (or :class:`UnicodeDecodeError` for bytes that are not UTF-8)
    as :func:`json.loads` does.
    """
    try:
        value = json.loads(data, parse_int=_parse_int, parse_constant=_parse_constant)
    except PayloadError as exc:
        raise PayloadError(f"{what}: {exc}") from None
    except RecursionError:
        raise PayloadError(_too_deep(what, max_depth)) from None
    check(value, max_depth=max_depth, what=what)
    return value


def check(value: Any, *, max_depth: int = MAX_DEPTH, what: str = "payload") -> None:
    """Check a decoded value against the limits (iteratively: no recursion to exhaust).

    Raises :class:`bgq.PayloadError` for nesting deeper than ``max_depth`` (a scalar is depth 0,
    ``[]`` depth 1) or an integer over :data:`MAX_INT_DIGITS` digits. Walks level by level; on
    the enqueue path of every job, so the common types are tested with ``type() is``.
    """
    level: list[Any] = [value]
    depth = 0
    while level:
        below: list[Any] = []
        containers = False
        for item in level:
            kind = type(item)
            if kind is dict:
                containers = True
                below.extend(item.values())
            elif kind is list or kind is tuple:
                containers = True
                below.extend(item)
            elif kind is int:
                if item.bit_length() >= _MAX_INT_BITS and _too_long(item):
                    raise PayloadError(_too_many_digits(what))
            elif isinstance(item, dict):  # subclasses: rare
                containers = True
                below.extend(item.values())
            elif isinstance(item, list | tuple):
                containers = True
                below.extend(item)
            elif isinstance(item, int) and not isinstance(item, bool) and _too_long(item):
                raise PayloadError(_too_many_digits(what))
        if containers:
            depth += 1
            if depth > max_depth:
                raise PayloadError(_too_deep(what, max_depth))
        level = below


def _too_many_digits(what: str) -> str:
    return (
        f"{what}: an integer has more than {MAX_INT_DIGITS} digits, the most allowed: "
        "send big numbers as strings"
    )


def _too_long(number: int) -> bool:
    bits = number.bit_length()
    if bits != _MAX_INT_BITS:
        return bits > _MAX_INT_BITS
    return len(str(abs(number))) > MAX_INT_DIGITS


def _too_deep(what: str, max_depth: int) -> str:
    return f"{what}: JSON nested deeper than {max_depth} levels"
