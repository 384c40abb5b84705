"""Job progress and checkpoints: how they are encoded, carried and read back.

Task code calls ``current_job().progress(fraction, detail)`` and ``checkpoint(data)``; the calls
only record the latest value in the job's context (coalesced: a thousand calls between two
renewals cost one write). The worker's lease renewal - the round trip it makes anyway - carries
the pending values to Redis (``renew.lua``'s progress records, written only while the worker's
delivery token still holds), into the job hash fields ``progress`` and ``checkpoint``.
``Client.get``, ``bgq job``, the gateway and ``wait(..., on_progress=...)`` read them back; the
next attempt of the job (after a retry or a drain hand-back) starts with
``current_job().last_checkpoint`` set to the last stored checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from bgq.errors import ConfigError, PayloadError

MAX_DETAIL_CHARS: Final = 500
"""Longer progress details are cut (a progress line, not a log)."""
MAX_CHECKPOINT_BYTES: Final = 256 * 1024
"""Checkpoints are resume points (offsets, cursors, ids), not data: store bulk data elsewhere."""
MARKER: Final = ("", "progress", "", "")
"""The renew.lua record that separates lease renewals from progress records."""


@dataclass(frozen=True, slots=True)
class Progress:
    """The last progress a job reported."""

    fraction: float
    """0.0 .. 1.0"""
    detail: str
    updated_ms: int
    """When the task reported it (epoch ms)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (gateway, ``bgq job --json``)."""
        return {"fraction": self.fraction, "detail": self.detail, "updated_ms": self.updated_ms}


def encode_progress(fraction: float, detail: str, now_ms: int) -> str:
    """Validate and encode one progress report (raises :class:`ConfigError` on bad input)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ConfigError(f"progress fraction must be a number, got {type(fraction).__name__}")
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"progress fraction must be between 0 and 1, got {fraction}")
    if not isinstance(detail, str):
        raise ConfigError(f"progress detail must be a string, got {type(detail).__name__}")
    return json.dumps(
        {"f": float(fraction), "d": detail[:MAX_DETAIL_CHARS], "t": now_ms},
        separators=(",", ":"),
    )


def decode_progress(text: str | None) -> Progress | None:
    """The stored progress, or None when there is none (or it is unreadable)."""
    if not text:
        return None
    try:
        raw = json.loads(text)
        return Progress(float(raw["f"]), str(raw.get("d", "")), int(raw.get("t", 0)))
    except (ValueError, TypeError, KeyError):
        return None


def encode_checkpoint(data: Any) -> str:
    """JSON text of a checkpoint (raises :class:`PayloadError` when it is not JSON or too big)."""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"checkpoint is not JSON-serialisable ({exc}): pass plain JSON types"
        ) from exc
    if len(text) > MAX_CHECKPOINT_BYTES:
        raise PayloadError(
            f"checkpoint is {len(text)} bytes, over the limit of {MAX_CHECKPOINT_BYTES}: store "
            "the data elsewhere and checkpoint a reference to it"
        )
    return text


def decode_checkpoint(text: str | None) -> Any:
    """The stored checkpoint (None when there is none or it is unreadable)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def renew_args(updates: Iterable[tuple[str, int | str, str, str]]) -> list[Any]:
    """renew.lua ARGV tail for ``(job id, token, progress JSON, checkpoint JSON)`` updates
    ('' = unchanged); empty when there is nothing to send, so the call is the plain renewal."""
    out: list[Any] = []
    for job_id, token, progress, checkpoint in updates:
        if progress or checkpoint:
            out += (job_id, token, progress, checkpoint)
    return [*MARKER, *out] if out else []


def from_job_hash(h: Mapping[str, str]) -> tuple[Progress | None, Any]:
    """(progress, checkpoint) of a job hash (HGETALL)."""
    return decode_progress(h.get("progress")), decode_checkpoint(h.get("checkpoint"))


__all__ = [
    "MARKER",
    "MAX_CHECKPOINT_BYTES",
    "MAX_DETAIL_CHARS",
    "Progress",
    "decode_checkpoint",
    "decode_progress",
    "encode_checkpoint",
    "encode_progress",
    "from_job_hash",
    "renew_args",
]
