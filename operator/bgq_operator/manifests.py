"""Pure builders of the worker Deployment (plain dicts) from a BackgroundQueue spec.

No I/O here: the same inputs always give the same manifest, so table tests can pin every field
and reconcile can compare desired with live state. Contracts (docs/design.md): the Deployment is
``bgq-<name>`` in the queue's namespace, labelled for the queue, and the worker is configured
*only* through ``BGQ_*`` environment variables; secrets travel by ``secretKeyRef``, never copied.

Environment precedence: the operator's ``BGQ_*`` variables come first, then ``spec.worker.env``
(which may not redefine an operator-managed name: the CRD rejects it, and the builder drops such
an entry defensively), then ``envFrom`` sources, which Kubernetes ranks below every explicit
``env`` entry. So spec fields always win and there is exactly one source per setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bgq_operator.spec import (
    API_VERSION,
    KIND,
    MANAGED_ENV,
    BackgroundQueueSpec,
    SecretKeyRef,
    deployment_name,
    queue_name,
)

MANAGED_BY = "bgq-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_QUEUE = "bgq.dev/queue"
WORKER_APP = "bgq-worker"
CONTAINER_NAME = "worker"
HTTP_PORT = 8080
RUN_AS_ID = 10001
GRACE_MARGIN_SECONDS = 5
CA_MOUNT_DIR = "/etc/bgq/redis-ca"
CA_FILE_NAME = "ca.crt"
# tini as PID 1 (docs/design.md, "PID 1"): it forwards SIGTERM to the worker (only to it, no -g:
# the children running cpu_bound jobs must not be interrupted) and reaps orphans. `-e 143` reports
# "bgq was killed by SIGTERM" as exit 0: that can only happen before bgq installed its SIGTERM
# handler, which it does before it connects or fetches anything, so nothing was left undone.
# `command` replaces the image's ENTRYPOINT, so this must name tini itself (the bgq-worker image
# has it; a custom image without tini sets spec.worker.command).
DEFAULT_COMMAND = ("tini", "-e", "143", "--", "bgq", "worker")


@dataclass(frozen=True)
class ManifestOptions:
    """Operator-wide settings that shape every worker Deployment (flags of ``bgq-operator``).

    ``scrape_annotations`` puts the conventional ``prometheus.io/scrape|port|path`` annotations
    on worker pods, for Prometheus setups that discover pods by annotation instead of a
    PodMonitor. It is operator-wide (chart value ``metrics.workers.scrapeAnnotations``) rather
    than a spec field because how the cluster scrapes is the platform's choice, not each queue's;
    a queue can still set or override them through ``spec.worker.podAnnotations``, which win.
    """

    scrape_annotations: bool = False


def scrape_annotations() -> dict[str, str]:
    """The ``prometheus.io/*`` annotations of a worker pod (its /metrics on the http port)."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select a queue's worker pods (immutable in the Deployment's selector)."""
    return {LABEL_NAME: WORKER_APP, LABEL_INSTANCE: name}


def worker_labels(name: str) -> dict[str, str]:
    """All labels the operator puts on the Deployment and its pods."""
    return {**selector_labels(name), LABEL_MANAGED_BY: MANAGED_BY, LABEL_QUEUE: name}


def selector_string(name: str) -> str:
    """The pod selector as a string (``status.selector``, for the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """The controller owner reference to the BackgroundQueue: deleting it garbage-collects the
    Deployment, its ReplicaSets and pods without any finalizer."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _secret_env(var: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _redis_url(spec: BackgroundQueueSpec) -> str | None:
    """The literal Redis URL, upgraded to rediss:// when ``tls.enabled`` asks for TLS."""
    url = spec.redis.url
    if url is not None and spec.redis.tls.enabled and url.startswith("redis://"):
        return "rediss://" + url[len("redis://") :]
    return url


def worker_env(name: str, namespace: str, spec: BackgroundQueueSpec) -> list[dict[str, Any]]:
    """The worker container's ``env``: operator-managed ``BGQ_*`` first, then the user's."""
    env: list[dict[str, Any]] = []
    url = _redis_url(spec)
    if url is not None:
        env.append({"name": "BGQ_REDIS_URL", "value": url})
    elif spec.redis.url_secret_ref is not None:
        env.append(_secret_env("BGQ_REDIS_URL", spec.redis.url_secret_ref))
    if spec.redis.mode != "Standalone":  # unset for Standalone: existing Deployments unchanged
        env.append({"name": "BGQ_REDIS_MODE", "value": spec.redis.mode.lower()})
        if spec.redis.nodes:
            env.append({"name": "BGQ_REDIS_NODES", "value": ",".join(spec.redis.nodes)})
        if spec.redis.sentinel_master:
            env.append({"name": "BGQ_REDIS_SENTINEL_MASTER", "value": spec.redis.sentinel_master})
    if spec.redis.password_secret_ref is not None:
        env.append(_secret_env("BGQ_REDIS_PASSWORD", spec.redis.password_secret_ref))
    if spec.redis.tls.ca_secret_ref is not None:
        env.append({"name": "BGQ_REDIS_TLS_CA_FILE", "value": f"{CA_MOUNT_DIR}/{CA_FILE_NAME}"})
    jobs = spec.jobs
    plain = {
        "BGQ_QUEUE": queue_name(namespace, name),
        "BGQ_NAMESPACE": namespace,
        "BGQ_TASKS_MODULE": spec.worker.tasks_module,
        "BGQ_CONCURRENCY": spec.worker.concurrency,
        "BGQ_DRAIN_SECONDS": spec.drain_seconds,
        "BGQ_LEASE_SECONDS": jobs.lease_seconds,
        "BGQ_MAX_DELIVERIES": jobs.max_deliveries,
        "BGQ_DEFAULT_TIMEOUT_SECONDS": jobs.timeout_seconds,
        "BGQ_DEFAULT_MAX_RETRIES": jobs.max_retries,
        "BGQ_BACKOFF_BASE_SECONDS": jobs.backoff.base_seconds,
        "BGQ_BACKOFF_MAX_SECONDS": jobs.backoff.max_seconds,
        "BGQ_RESULT_TTL_SECONDS": jobs.result_ttl_seconds,
        "BGQ_DEAD_RETENTION_SECONDS": jobs.dead_letter_retention_seconds,
        "BGQ_HTTP_PORT": HTTP_PORT,
    }
    env.extend({"name": k, "value": str(v)} for k, v in plain.items())
    env.append(
        {
            "name": "BGQ_POD_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        }
    )
    for extra in spec.worker.env or ():
        if extra.name in MANAGED_ENV:
            continue  # the CRD rejects these; never let one shadow a spec field
        env.append(extra.model_dump(by_alias=True, exclude_none=True))
    return env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def container_security_context() -> dict[str, Any]:
    """Restricted Pod Security Standard for the worker container."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def worker_container(name: str, namespace: str, spec: BackgroundQueueSpec) -> dict[str, Any]:
    """The single worker container."""
    worker = spec.worker
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": worker.image,
        "imagePullPolicy": worker.image_pull_policy,
        "command": list(worker.command or DEFAULT_COMMAND),
    }
    if worker.args:
        container["args"] = list(worker.args)
    container["env"] = worker_env(name, namespace, spec)
    if worker.env_from:
        container["envFrom"] = [dict(src) for src in worker.env_from]
    container["ports"] = [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    # startup covers slow imports of the tasks module; liveness then restarts a hung worker;
    # readiness reflects the worker's own view (Redis reachable, not draining).
    container["startupProbe"] = _probe("/livez", period=2, failures=60)
    container["livenessProbe"] = _probe("/livez", period=10, failures=3)
    container["readinessProbe"] = _probe("/readyz", period=5, failures=2)
    if worker.resources is not None:
        resources = worker.resources.model_dump(by_alias=True, exclude_none=True)
        if resources:
            container["resources"] = resources
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.redis.tls.ca_secret_ref is not None:
        mounts.append({"name": "redis-ca", "mountPath": CA_MOUNT_DIR, "readOnly": True})
    container["volumeMounts"] = mounts
    container["securityContext"] = container_security_context()
    return container


def pod_template(
    name: str,
    namespace: str,
    spec: BackgroundQueueSpec,
    *,
    options: ManifestOptions = ManifestOptions(),
) -> dict[str, Any]:
    """The worker pod template: user pod settings plus the operator's fixed ones."""
    worker = spec.worker
    labels = {**(worker.pod_labels or {}), **worker_labels(name)}  # ours win on conflict
    metadata: dict[str, Any] = {"labels": labels}
    annotations = scrape_annotations() if options.scrape_annotations else {}
    annotations.update(worker.pod_annotations or {})  # the queue's own annotations win
    if annotations:
        metadata["annotations"] = annotations
    pod: dict[str, Any] = {
        "containers": [worker_container(name, namespace, spec)],
        "terminationGracePeriodSeconds": spec.drain_seconds + GRACE_MARGIN_SECONDS,
        # a Service named e.g. "bgq-http" in the namespace would otherwise inject BGQ_HTTP_PORT=tcp://...
        # into the worker's environment, which the worker reads as its own settings
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_ID,
            "runAsGroup": RUN_AS_ID,
            "fsGroup": RUN_AS_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if worker.service_account_name:
        pod["serviceAccountName"] = worker.service_account_name
    else:
        # workers need no Kubernetes API access; with the namespace's default
        # ServiceAccount, do not hand them its token
        pod["automountServiceAccountToken"] = False
    if worker.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in worker.image_pull_secrets]
    if worker.node_selector:
        pod["nodeSelector"] = dict(worker.node_selector)
    if worker.tolerations:
        pod["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in worker.tolerations
        ]
    if worker.affinity:
        pod["affinity"] = dict(worker.affinity)
    if worker.priority_class_name:
        pod["priorityClassName"] = worker.priority_class_name
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    ca = spec.redis.tls.ca_secret_ref
    if ca is not None:
        volumes.append(
            {
                "name": "redis-ca",
                "secret": {
                    "secretName": ca.name,
                    "items": [{"key": ca.key, "path": CA_FILE_NAME}],
                    "defaultMode": 0o444,
                },
            }
        )
    pod["volumes"] = volumes
    return {"metadata": metadata, "spec": pod}


def build_deployment(
    name: str,
    namespace: str,
    uid: str,
    spec: BackgroundQueueSpec,
    replicas: int,
    *,
    options: ManifestOptions = ManifestOptions(),
) -> dict[str, Any]:
    """The complete worker Deployment for BackgroundQueue ``namespace/name``.

    ``replicas`` is the autoscaler's (or ``spec.replicas``') current answer: reconcile passes
    the live value for an existing Deployment, so putting back drift never changes the scale.
    Rolling updates surge new pods before old ones drain (``maxUnavailable: 0``), so a spec
    change never drops capacity while old workers finish their jobs.
    """
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": namespace,
            "labels": worker_labels(name),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": pod_template(name, namespace, spec, options=options),
        },
    }
