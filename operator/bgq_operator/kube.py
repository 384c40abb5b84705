"""The few Kubernetes API calls the operator makes, as plain dicts over the asyncio client.

Built on ``kubernetes.aio`` (the official client's asyncio flavour, aiohttp underneath) but only
its authenticated transport: requests and responses are plain JSON dicts, so manifests stay the
pure dicts the builders produce and model-class churn in the client does not matter. Every call
here is listed in docs/operator.md ("API calls and RBAC"); keep that list in step.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.client.exceptions import ApiException

from bgq_operator import metrics
from bgq_operator.errors import KubernetesApiError
from bgq_operator.spec import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"
FIELD_MANAGER = "bgq-operator"
_event_seq = itertools.count()


class NotFoundError(KubernetesApiError):
    """The object does not exist (HTTP 404)."""


class ConflictError(KubernetesApiError):
    """The object changed since it was read, or already exists (HTTP 409)."""


def _error(action: str, exc: ApiException) -> KubernetesApiError:
    detail = str(exc.reason)
    with contextlib.suppress(TypeError, ValueError):
        detail = json.loads(exc.body or "{}").get("message") or detail
    if exc.status == 404:
        return NotFoundError(action, exc.status, detail)
    if exc.status == 409:
        return ConflictError(action, exc.status, detail)
    return KubernetesApiError(action, exc.status, detail)


class Kube:
    """An authenticated API connection with the operator's calls as methods."""

    def __init__(self, api: kclient.ApiClient, request_timeout: float = 15.0) -> None:
        self._api = api
        self._timeout = request_timeout

    @classmethod
    async def connect(cls, request_timeout: float = 15.0) -> Kube:
        """Log in like kubectl: in-cluster service account, else ``KUBECONFIG``/~/.kube/config."""
        configuration = kclient.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            kconfig.load_incluster_config(client_configuration=configuration)
        else:
            await kconfig.load_kube_config(client_configuration=configuration)
        return cls(kclient.ApiClient(configuration), request_timeout)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._api.close()

    async def request(
        self,
        action: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        """One API call; returns the response object, raises :class:`KubernetesApiError`."""
        metrics.API_REQUESTS.labels(method).inc()
        try:
            result = await self._api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": JSON, "Content-Type": content_type},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            raise _error(action, exc) from None
        return dict(result or {})

    # ---------------------------------------------------------------------------- deployments
    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """apps/deployments get; None when absent."""
        try:
            return await self.request(
                f"get deployment {namespace}/{name}",
                "GET",
                f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            )
        except NotFoundError:
            return None

    async def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """apps/deployments create."""
        return await self.request(
            f"create deployment {namespace}/{body['metadata']['name']}",
            "POST",
            f"/apis/apps/v1/namespaces/{namespace}/deployments",
            body,
            query={"fieldManager": FIELD_MANAGER},
        )

    async def replace_deployment(
        self, namespace: str, body: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        """apps/deployments update (PUT; ``metadata.resourceVersion`` guards against races)."""
        query = {"fieldManager": FIELD_MANAGER}
        if dry_run:
            query["dryRun"] = "All"
        name = body["metadata"]["name"]
        return await self.request(
            f"update deployment {namespace}/{name}",
            "PUT",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            body,
            query=query,
        )

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """apps/deployments patch of ``spec.replicas`` only."""
        return await self.request(
            f"scale deployment {namespace}/{name} to {replicas}",
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            {"spec": {"replicas": replicas}},
            query={"fieldManager": FIELD_MANAGER},
            content_type=MERGE_PATCH,
        )

    # ----------------------------------------------------------------------------------- pods
    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """core/pods list by label selector."""
        result = await self.request(
            f"list pods {namespace} ({selector})",
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            query={"labelSelector": selector},
        )
        return list(result.get("items") or [])

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """core/pods patch of annotations (None removes one)."""
        await self.request(
            f"annotate pod {namespace}/{name}",
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            {"metadata": {"annotations": dict(annotations)}},
            query={"fieldManager": FIELD_MANAGER},
            content_type=MERGE_PATCH,
        )

    # -------------------------------------------------------------------------------- secrets
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """core/secrets get; None when absent."""
        try:
            return await self.request(
                f"get secret {namespace}/{name}",
                "GET",
                f"/api/v1/namespaces/{namespace}/secrets/{name}",
            )
        except NotFoundError:
            return None

    # ------------------------------------------------------------------------ BackgroundQueues
    async def patch_queue_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """bgq.dev/backgroundqueues/status patch (merge patch; lists are replaced whole)."""
        return await self.request(
            f"patch status of backgroundqueue {namespace}/{name}",
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            {"status": dict(status)},
            query={"fieldManager": FIELD_MANAGER},
            content_type=MERGE_PATCH,
        )

    # --------------------------------------------------------------------------------- events
    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
    ) -> None:
        """core/events create, about a BackgroundQueue (``involved`` = its metadata + kind)."""
        namespace = str(involved["namespace"])
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{stamp}{next(_event_seq)}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "BackgroundQueue",
                "name": involved["name"],
                "namespace": namespace,
                "uid": involved.get("uid", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": os.environ.get("HOSTNAME", FIELD_MANAGER),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request(
            f"create event for {namespace}/{involved['name']}",
            "POST",
            f"/api/v1/namespaces/{namespace}/events",
            body,
        )
