"""bgq_operator: the kopf operator that runs and autoscales BackgroundQueue workers.

Run it with ``bgq-operator`` or ``python -m bgq_operator``. The parts, one concern each:
:mod:`~bgq_operator.spec` (the CRD's pydantic models; :mod:`~bgq_operator.crdgen` renders the
CRD from them), :mod:`~bgq_operator.manifests` (pure worker Deployment builders),
:mod:`~bgq_operator.reconcile` (the one idempotent reconcile), :mod:`~bgq_operator.scaling` and
:mod:`~bgq_operator.podcost` (pure autoscaling decisions), :mod:`~bgq_operator.autoscaler`
(the per-Redis loop that reads demand and applies decisions), :mod:`~bgq_operator.handlers`
(thin kopf handlers). See docs/operator.md and docs/autoscaling.md.
"""

from __future__ import annotations

from bgq_operator.errors import OperatorError
from bgq_operator.spec import BackgroundQueueSpec, BackgroundQueueStatus

__all__ = ["BackgroundQueueSpec", "BackgroundQueueStatus", "OperatorError"]
