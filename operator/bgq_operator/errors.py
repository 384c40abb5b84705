"""The operator's exception hierarchy.

Every error raised on purpose by ``bgq_operator`` derives from :class:`OperatorError`, so callers
(kopf handlers, the scaling loop, the CLI) can tell the operator's own, explained failures from
bugs. Messages name the object and say what to do about it.
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base class of every error the operator raises deliberately."""


class InvalidSpecError(OperatorError):
    """A BackgroundQueue spec that passed the API server's schema but cannot be used.

    Normally the CRD's schema and CEL rules reject bad manifests at ``kubectl apply``; this is
    raised when an object stored before a schema change (or written with validation off) still
    reaches the operator. The message lists every offending field.
    """


class DependencyError(OperatorError):
    """Something the queue depends on is missing or unreachable (a Secret, Redis).

    Carries a machine-readable ``reason`` (CamelCase, used as a condition reason and event
    reason) next to the human-readable message.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class KubernetesApiError(OperatorError):
    """A Kubernetes API call failed in a way the operator cannot fix by itself."""

    def __init__(self, action: str, status: int | None, detail: str) -> None:
        super().__init__(f"{action} failed (HTTP {status}): {detail}")
        self.action = action
        self.status = status
        self.detail = detail
