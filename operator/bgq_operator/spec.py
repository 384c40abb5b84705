"""The BackgroundQueue resource, defined once as pydantic models.

These models are the single source of truth for ``bgq.dev/v1alpha1 BackgroundQueue``:

* ``bgq_operator.crdgen`` turns them into the CRD's structural OpenAPI schema (descriptions,
  defaults, ranges, enums, CEL rules), so the API server rejects bad manifests at apply time;
* the operator parses every object's ``spec`` with :func:`parse_spec`, so the same defaults and
  cross-field rules hold in code even for objects stored before a schema change.

YAML uses camelCase (field aliases); Python uses snake_case. Cross-field rules are written twice
on purpose: as CEL (``x-kubernetes-validations``, enforced by the API server) and as pydantic
validators (enforced in code); a unit test checks that both reject the same manifests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from bgq_operator.errors import InvalidSpecError

GROUP = "bgq.dev"
VERSION = "v1alpha1"
KIND = "BackgroundQueue"
PLURAL = "backgroundqueues"
SINGULAR = "backgroundqueue"
SHORT_NAMES = ("bgq",)
API_VERSION = f"{GROUP}/{VERSION}"

# Environment variables the operator sets itself from spec fields. ``worker.env`` may not set
# them (CEL rule + validator): one source per setting, no precedence puzzles.
MANAGED_ENV = (
    "BGQ_REDIS_URL",
    "BGQ_REDIS_PASSWORD",
    "BGQ_REDIS_TLS_CA_FILE",
    "BGQ_REDIS_MODE",
    "BGQ_REDIS_NODES",
    "BGQ_REDIS_SENTINEL_MASTER",
    "BGQ_QUEUE",
    "BGQ_NAMESPACE",
    "BGQ_TASKS_MODULE",
    "BGQ_CONCURRENCY",
    "BGQ_DRAIN_SECONDS",
    "BGQ_LEASE_SECONDS",
    "BGQ_MAX_DELIVERIES",
    "BGQ_DEFAULT_TIMEOUT_SECONDS",
    "BGQ_DEFAULT_MAX_RETRIES",
    "BGQ_BACKOFF_BASE_SECONDS",
    "BGQ_BACKOFF_MAX_SECONDS",
    "BGQ_RESULT_TTL_SECONDS",
    "BGQ_DEAD_RETENTION_SECONDS",
    "BGQ_HTTP_PORT",
    "BGQ_POD_NAME",
)

_CEL_MANAGED_ENV = "[" + ", ".join(f"'{n}'" for n in MANAGED_ENV) + "]"
_MODULE_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
_ENV_NAME_RE = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_K8S_NAME_RE = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_MAX_REPLICAS = 1000


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry (a CEL rule and the message shown on rejection)."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


class _Model(BaseModel):
    """Base of every spec model: camelCase aliases, populate by either name, ignore unknowns.

    Unknown fields are ignored (not rejected): the API server already prunes them with the
    structural schema, and an older operator must keep working with a newer CRD.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


def _schema_extra(**extra: Any) -> Any:
    """``json_schema_extra`` for a model: Kubernetes-specific schema keys (CEL rules)."""
    return extra


# --------------------------------------------------------------------------------- references
class SecretKeyRef(_Model):
    """A key of a Secret in the BackgroundQueue's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=_K8S_NAME_RE, description="Name of the Secret."
    )
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key inside the Secret's data.",
    )


class LocalObjectReference(_Model):
    """A reference to an object by name in the same namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the object.")


# -------------------------------------------------------------------------------------- redis
class RedisTls(_Model):
    """TLS settings for the Redis connection."""

    enabled: bool = Field(
        default=False,
        description="Connect with TLS: a literal redis:// url is used as rediss://. "
        "A URL from urlSecretRef decides by its own scheme (use rediss:// there).",
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="CA bundle (PEM) that signs the Redis server certificate; mounted into "
        "worker pods read-only and passed as BGQ_REDIS_TLS_CA_FILE. Omit to use system CAs.",
    )


_HOST_PORT_RE = r"^[A-Za-z0-9._\[\]:-]+:[0-9]{1,5}$"


class RedisSpec(_Model):
    """Where the queue's Redis lives. Exactly one of url or urlSecretRef; ``mode`` says what the
    URL names (the server, a cluster seed node, or a sentinel)."""

    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            **{
                "x-kubernetes-validations": [
                    _cel(
                        "has(self.url) != has(self.urlSecretRef)",
                        "exactly one of spec.redis.url or spec.redis.urlSecretRef must be set",
                    ),
                    _cel(
                        "!has(self.mode) || self.mode != 'Sentinel' || has(self.sentinelMaster)",
                        "spec.redis.sentinelMaster is required when spec.redis.mode is Sentinel",
                    ),
                    _cel(
                        "!has(self.sentinelMaster) || (has(self.mode) && self.mode == 'Sentinel')",
                        "spec.redis.sentinelMaster needs spec.redis.mode: Sentinel",
                    ),
                    _cel(
                        "!has(self.nodes) || size(self.nodes) == 0 || "
                        "(has(self.mode) && self.mode != 'Standalone')",
                        "spec.redis.nodes lists cluster seeds or sentinels: set spec.redis.mode "
                        "to Cluster or Sentinel",
                    ),
                    _cel(
                        "!has(self.url) || !has(self.mode) || self.mode != 'Cluster' || "
                        "!self.url.matches('^rediss?://[^/]*/[1-9]')",
                        "a Redis Cluster has only db 0: drop the db from spec.redis.url",
                    ),
                ]
            }
        )
    )

    mode: Literal["Standalone", "Cluster", "Sentinel"] = Field(
        default="Standalone",
        description="Standalone: url is the server. Cluster: url is one seed node of a Redis "
        "Cluster (redis-py's cluster client routes by slot; a queue's keys share one slot). "
        "Sentinel: url is one sentinel (its path the db), sentinelMaster the master's name.",
    )
    nodes: list[Annotated[str, Field(max_length=261, pattern=_HOST_PORT_RE)]] | None = Field(
        default=None,
        max_length=32,
        description="More cluster seed nodes (Cluster) or sentinels (Sentinel), as host:port; "
        "scheme, credentials and TLS come from url.",
    )
    sentinel_master: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Name of the master the sentinels monitor (mode: Sentinel only).",
    )

    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^rediss?://",
        description="Redis URL, redis:// or rediss:// (TLS), e.g. redis://redis.infra:6379/0. "
        "Must not contain a password: use passwordSecretRef or urlSecretRef for secrets.",
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the whole Redis URL (use when the URL embeds "
        "credentials). Passed to workers by secretKeyRef, never copied.",
    )
    password_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the Redis password; overrides the URL's password. "
        "Passed to workers by secretKeyRef, never copied.",
    )
    tls: RedisTls = Field(default_factory=RedisTls, description="TLS settings.")

    @model_validator(mode="after")
    def _one_url_source(self) -> RedisSpec:
        if (self.url is None) == (self.url_secret_ref is None):
            raise ValueError("exactly one of spec.redis.url or spec.redis.urlSecretRef must be set")
        if self.mode == "Sentinel" and not self.sentinel_master:
            raise ValueError(
                "spec.redis.sentinelMaster is required when spec.redis.mode is Sentinel"
            )
        if self.sentinel_master and self.mode != "Sentinel":
            raise ValueError("spec.redis.sentinelMaster needs spec.redis.mode: Sentinel")
        if self.nodes and self.mode == "Standalone":
            raise ValueError(
                "spec.redis.nodes lists cluster seeds or sentinels: set spec.redis.mode to "
                "Cluster or Sentinel"
            )
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether the worker connects with TLS (explicit flag or a rediss:// URL)."""
        return self.tls.enabled or (self.url or "").startswith("rediss://")


# ------------------------------------------------------------------------------------- worker
Quantity = Annotated[
    int | str,
    Field(
        json_schema_extra={"x-kubernetes-int-or-string": True},
        description="A Kubernetes quantity, e.g. 500m, 1, 256Mi.",
    ),
]


class ResourceRequirements(_Model):
    """Compute resources of the worker container (as in a Pod's container.resources)."""

    limits: dict[str, Quantity] | None = Field(
        default=None, description="Maximum resources, e.g. {cpu: '1', memory: 512Mi}."
    )
    requests: dict[str, Quantity] | None = Field(
        default=None, description="Guaranteed resources, used for scheduling."
    )


class EnvVar(_Model):
    """An extra environment variable for the worker container (core/v1 EnvVar)."""

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=_ENV_NAME_RE,
        description="Variable name. BGQ_* variables "
        "the operator sets from the spec (see docs/operator.md) are rejected.",
    )
    value: str | None = Field(default=None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="Source of the value (secretKeyRef, configMapKeyRef, fieldRef, "
        "resourceFieldRef), as in core/v1 EnvVarSource.",
    )


class Toleration(_Model):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key; empty with Exists matches all.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint."
    )


class WorkerSpec(_Model):
    """The worker pods: image, command, tasks module, and ordinary pod settings."""

    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            **{
                "x-kubernetes-validations": [
                    _cel(
                        f"!has(self.env) || self.env.all(e, !(e.name in {_CEL_MANAGED_ENV}))",
                        "spec.worker.env must not set BGQ_* variables the operator manages "
                        "(queue, redis, concurrency, jobs policy, drain, http port, pod name): "
                        "set the matching spec field instead",
                        ".env",
                    )
                ]
            }
        )
    )

    image: str = Field(
        min_length=1,
        max_length=1024,
        description="Container image with the bgq package and the tasks module installed.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, description="Secrets for pulling the image from a private registry."
    )
    command: list[str] | None = Field(
        default=None,
        description=(
            "Container command. Default: [tini, -e, 143, --, bgq, worker] (tini as PID 1; "
            "an image without tini must set it)."
        ),
    )
    args: list[str] | None = Field(default=None, description="Container arguments.")
    tasks_module: str = Field(
        min_length=1,
        max_length=512,
        pattern=_MODULE_RE,
        description="Python module that defines the tasks, e.g. myapp.tasks "
        "(passed as BGQ_TASKS_MODULE).",
    )
    concurrency: int = Field(
        default=10, ge=1, le=10000, description="Jobs run at once per worker pod (BGQ_CONCURRENCY)."
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=256,
        description="Extra environment variables, appended after the operator's BGQ_* ones. "
        "May set BGQ_LOG_LEVEL, BGQ_LOG_FORMAT, BGQ_HEARTBEAT_SECONDS and application "
        "variables; variables managed from the spec are rejected.",
    )
    env_from: list[dict[str, Any]] | None = Field(
        default=None,
        description="Extra environment from ConfigMaps/Secrets (core/v1 EnvFromSource). "
        "Explicit env entries (the operator's and yours) take precedence over these.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU/memory requests and limits of the worker container."
    )
    service_account_name: str | None = Field(
        default=None, max_length=253, description="ServiceAccount the worker pods run as."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the worker pods must be scheduled on."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="Tolerations of the worker pods."
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="Affinity of the worker pods (core/v1 Affinity)."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the worker pods."
    )
    pod_labels: dict[str, str] | None = Field(
        default=None,
        description="Extra pod labels. The operator's own labels (app.kubernetes.io/*, "
        "bgq.dev/queue) win on conflict.",
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None, description="Extra pod annotations."
    )

    @model_validator(mode="after")
    def _no_managed_env(self) -> WorkerSpec:
        clashes = sorted({e.name for e in self.env or () if e.name in MANAGED_ENV})
        if clashes:
            raise ValueError(
                f"spec.worker.env must not set {', '.join(clashes)}: the operator manages "
                "these from the spec; set the matching spec field instead"
            )
        return self


# --------------------------------------------------------------------------------------- jobs
class Backoff(_Model):
    """Retry backoff: exponential with full jitter, between baseSeconds and maxSeconds."""

    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            **{
                "x-kubernetes-validations": [
                    _cel(
                        "self.baseSeconds <= self.maxSeconds",
                        "spec.jobs.backoff.baseSeconds must be <= maxSeconds",
                    )
                ]
            }
        )
    )

    base_seconds: int = Field(
        default=1,
        ge=0,
        le=86400,
        description="First retry delay in seconds (BGQ_BACKOFF_BASE_SECONDS).",
    )
    max_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="Largest retry delay in seconds (BGQ_BACKOFF_MAX_SECONDS).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.base_seconds > self.max_seconds:
            raise ValueError("spec.jobs.backoff.baseSeconds must be <= maxSeconds")
        return self


class JobsSpec(_Model):
    """Job policy defaults for this queue (tasks and jobs may override per job)."""

    timeout_seconds: int = Field(
        default=300,
        ge=1,
        le=604800,
        description="Job timeout when the task sets none (BGQ_DEFAULT_TIMEOUT_SECONDS).",
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Retries after a failure when the task sets none (BGQ_DEFAULT_MAX_RETRIES).",
    )
    backoff: Backoff = Field(default_factory=Backoff, description="Retry backoff.")
    lease_seconds: int = Field(
        default=30,
        ge=3,
        le=3600,
        description="Job lease, renewed every lease/3 while the job "
        "runs; a crashed worker's jobs are re-delivered after it expires (BGQ_LEASE_SECONDS).",
    )
    max_deliveries: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Lease expiries (worker crashes) before a job is "
        "dead-lettered as a poison pill (BGQ_MAX_DELIVERIES).",
    )
    result_ttl_seconds: int = Field(
        default=86400,
        ge=0,
        le=31536000,
        description="How long job state and results stay "
        "after completion (BGQ_RESULT_TTL_SECONDS).",
    )
    dead_letter_retention_seconds: int = Field(
        default=604800,
        ge=0,
        le=31536000,
        description="Dead letters older than this are trimmed (BGQ_DEAD_RETENTION_SECONDS).",
    )


# ------------------------------------------------------------------------------------ scaling
class ScalingSpec(_Model):
    """The demand-exact autoscaler. Demand = backlog + in-flight + due delayed jobs."""

    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            **{
                "x-kubernetes-validations": [
                    _cel(
                        "self.minReplicas <= self.maxReplicas",
                        "spec.scaling.minReplicas must be <= spec.scaling.maxReplicas",
                        ".minReplicas",
                    )
                ]
            }
        )
    )

    enabled: bool = Field(
        default=True,
        description="Autoscale from queue demand. false: replicas = spec.replicas "
        "(kubectl scale backgroundqueue/NAME --replicas=N).",
    )
    min_replicas: int = Field(
        default=0,
        ge=0,
        le=_MAX_REPLICAS,
        description="Fewest worker pods (0 allows scale to zero).",
    )
    max_replicas: int = Field(default=10, ge=1, le=_MAX_REPLICAS, description="Most worker pods.")
    jobs_per_pod: int = Field(
        default=0,
        ge=0,
        le=100000,
        description="Target jobs per pod; 0 means "
        "spec.worker.concurrency. desired = ceil(demand / jobsPerPod).",
    )
    idle_headroom: int = Field(
        default=0,
        ge=0,
        le=_MAX_REPLICAS,
        description="Extra warm pods kept while there is any demand (within maxReplicas).",
    )
    scale_down_delay_seconds: int = Field(
        default=30,
        ge=0,
        le=86400,
        description="Demand must stay lower this long before scaling down. Scale-up is immediate.",
    )
    idle_seconds_before_zero: int = Field(
        default=60,
        ge=0,
        le=86400,
        description="No work anywhere (backlog, in flight, due "
        "soon) for this long before scaling to zero.",
    )
    poll_interval_seconds: int = Field(
        default=2,
        ge=1,
        le=300,
        description="Fallback poll of the queue's demand; enqueues "
        "also wake the operator at once through the bgq:wake channel.",
    )
    on_redis_unavailable: Literal["Keep", "Min"] = Field(
        default="Keep",
        description="While Redis is unreachable: Keep the current replicas, "
        "or go to Min (minReplicas).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("spec.scaling.minReplicas must be <= spec.scaling.maxReplicas")
        return self

    def target_jobs_per_pod(self, concurrency: int) -> int:
        """The effective jobs-per-pod target (0 means the worker's concurrency)."""
        return self.jobs_per_pod or concurrency


# ---------------------------------------------------------------------------------- schedules
_CRON_RE = (
    r"^\s*(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    r"[0-9A-Za-z*/,?#-]+(\s+[0-9A-Za-z*/,?#-]+){4})\s*$"
)
_ZONE_RE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$"
_LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
JsonValue = Annotated[Any, Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]


class CatchUp(_Model):
    """How many ticks missed during an operator or Redis outage are fired afterwards."""

    max_ticks: int = Field(
        default=1, ge=0, le=1000, description="Fire at most this many missed ticks (newest)."
    )
    window_seconds: int = Field(
        default=3600,
        ge=0,
        le=2678400,
        description="Only ticks at most this old are fired late; keep it below "
        "spec.jobs.resultTtlSeconds (the fired job's record is what makes a tick fire once).",
    )


class ScheduleSpec(_Model):
    """A periodic job, fired by the operator with the idempotent job id sched:<name>:<epoch>."""

    name: str = Field(
        min_length=1, max_length=63, pattern=_LABEL_RE, description="Schedule name (DNS label)."
    )
    cron: str = Field(
        min_length=1,
        max_length=256,
        pattern=_CRON_RE,
        description="5-field cron (minute hour day-of-month month day-of-week) or a macro "
        "(@hourly, @daily, @weekly, @monthly, @yearly).",
    )
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        pattern=_ZONE_RE,
        description="IANA time zone the cron is read in, e.g. Europe/Berlin.",
    )
    task: str = Field(min_length=1, max_length=200, description="Task name to run.")
    args: list[JsonValue] | None = Field(default=None, description="Positional arguments (JSON).")
    kwargs: dict[str, JsonValue] | None = Field(
        default=None, description="Keyword arguments (JSON object)."
    )
    priority: int = Field(default=1, ge=0, le=2, description="Band: 0 high, 1 normal, 2 low.")
    overlap: Literal["Allow", "Skip", "Replace"] = Field(
        default="Allow",
        description="While the previous tick's job is not final: Allow a new one, Skip this "
        "tick, or Replace (cancel the previous job, then fire).",
    )
    catch_up: CatchUp = Field(default_factory=CatchUp, description="Late firing after outages.")
    suspend: bool = Field(default=False, description="true: no ticks fire (they count as missed).")
    warm_seconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="With minReplicas 0, start one worker pod this long before each tick.",
    )

    @model_validator(mode="after")
    def _fires(self) -> ScheduleSpec:
        from bgq_operator.cron import InvalidScheduleError, validate_cron, validate_zone

        try:
            validate_zone(self.time_zone)
            validate_cron(self.cron, self.time_zone)
        except InvalidScheduleError as exc:
            raise ValueError(str(exc)) from None
        return self


# ------------------------------------------------------------------------------------- limits
class RateSpec(_Model):
    """At most ``jobs`` job starts per ``perSeconds`` (a token bucket of ``jobs`` tokens)."""

    jobs: int = Field(ge=1, le=1000000, description="Job starts allowed per period (>= 1).")
    per_seconds: float = Field(
        default=1, gt=0, le=86400, description="The period in seconds (> 0)."
    )


class LimitKeySpec(_Model):
    """A per-key limit: jobs are grouped by a value read from each job."""

    model_config = ConfigDict(
        json_schema_extra=_schema_extra(
            **{
                "x-kubernetes-validations": [
                    _cel(
                        "has(self.concurrency) || has(self.rate)",
                        "spec.limits.keys[] needs concurrency or rate (or both)",
                    )
                ]
            }
        )
    )

    name: str = Field(
        min_length=1, max_length=63, pattern=_LABEL_RE, description="Limit name (DNS label)."
    )
    key_from: str = Field(
        max_length=128,
        pattern=r"^(kwargs|header)\.[A-Za-z0-9_.-]+$",
        description="Where the key comes from: kwargs.<name> (a keyword argument) or "
        "header.<name> (an envelope header). Jobs without it share the key _default.",
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=100000, description="Jobs of one key running at once."
    )
    rate: RateSpec | None = Field(default=None, description="Job starts per key.")

    @model_validator(mode="after")
    def _some_limit(self) -> LimitKeySpec:
        if self.concurrency is None and self.rate is None:
            raise ValueError("spec.limits.keys[] needs concurrency or rate (or both)")
        return self


class LimitsSpec(_Model):
    """Rate limits and concurrency keys, enforced in the fetch script across all workers."""

    rate: RateSpec | None = Field(default=None, description="Job starts for the whole queue.")
    keys: list[LimitKeySpec] | None = Field(
        default=None,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Per-key limits (each job is checked against every key).",
    )


class SloSpec(_Model):
    """Service-level objectives of the queue, used by the chart's alerts (docs/observability.md)."""

    max_wait_seconds: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        description="Longest a ready job may wait for a worker before the BgqJobWaitAboveSlo "
        "alert fires (exported as bgq_operator_queue_slo_max_wait_seconds). Unset: no alert.",
    )


class BackgroundQueueSpec(_Model):
    """Desired state of a BackgroundQueue: one queue, its Redis, its workers and their scaling."""

    redis: RedisSpec = Field(description="Redis connection.")
    worker: WorkerSpec = Field(description="Worker pods.")
    jobs: JobsSpec = Field(default_factory=JobsSpec, description="Job policy defaults.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling.")
    drain_seconds: int = Field(
        default=25,
        ge=0,
        le=86400,
        description="SIGTERM drain budget of a worker "
        "(BGQ_DRAIN_SECONDS); terminationGracePeriodSeconds is this + 5.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=_MAX_REPLICAS,
        description="Worker pods when scaling.enabled=false (the scale subresource writes here).",
    )
    paused: bool = Field(
        default=False,
        description="true: workers stop fetching (checked in the fetch script), running jobs "
        "finish, enqueues are still accepted, and the queue scales to zero.",
    )
    schedules: list[ScheduleSpec] | None = Field(
        default=None,
        max_length=100,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Periodic jobs fired by the operator (exactly once per tick).",
    )
    limits: LimitsSpec | None = Field(default=None, description="Rate limits and concurrency keys.")

    slo: SloSpec | None = Field(default=None, description="Service-level objectives (alerts).")

    @model_validator(mode="after")
    def _unique_schedules(self) -> BackgroundQueueSpec:
        names = [s.name for s in self.schedules or ()]
        if len(names) != len(set(names)):
            raise ValueError("spec.schedules[].name must be unique")
        keys = [k.name for k in (self.limits.keys if self.limits else None) or ()]
        if len(keys) != len(set(keys)):
            raise ValueError("spec.limits.keys[].name must be unique")
        return self


# ------------------------------------------------------------------------------------- status
ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Model):
    """A status condition in the standard metav1.Condition shape."""

    type: str = Field(description="Ready, RedisReachable, Scaling or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When status last changed.",
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was computed from."
    )


class QueueStatus(_Model):
    """Queue figures read from Redis at the last decision."""

    name: str | None = Field(default=None, description="Full queue name, namespace/name.")
    backlog: int | None = Field(default=None, description="Jobs waiting, never delivered.")
    in_flight: int | None = Field(default=None, description="Jobs delivered to a worker.")
    delayed: int | None = Field(default=None, description="Delayed jobs and retries waiting.")
    due: int | None = Field(default=None, description="Delayed jobs already due.")
    dead: int | None = Field(default=None, description="Dead letters.")
    oldest_job_age_seconds: float | None = Field(
        default=None, description="Age of the oldest waiting job, seconds."
    )


class ScalingMemoryStatus(_Model):
    """The autoscaler's memory between decisions, kept so a restart does not scale down early."""

    window: list[list[float]] | None = Field(
        default=None, description="(time, need) pairs of the scale-down delay window."
    )
    idle_since: float | None = Field(
        default=None, description="Start of the current stretch without work (epoch seconds)."
    )
    last_scale_at: float | None = Field(
        default=None, description="When replicas were last changed (epoch seconds)."
    )


class ScalingLimitStatus(_Model):
    """The figures behind the limit caps of the last decision (present while a limit is set)."""

    rate: float | None = Field(default=None, description="spec.limits.rate.jobs.")
    per_seconds: float | None = Field(default=None, description="spec.limits.rate.perSeconds.")
    jobs_per_second: float | None = Field(default=None, description="rate / perSeconds.")
    run_seconds: float | None = Field(
        default=None,
        description="Observed job run time (Little's law: busy jobs / completions per second, "
        "over at least 10 s); absent until jobs have completed.",
    )
    cap: int | None = Field(
        default=None,
        description="Most pods the rate limit keeps busy: ceil(jobsPerSecond x runSeconds / "
        "jobsPerPod) + headroom (before a run time is known: in flight + 1 s of starts).",
    )
    running: int | None = Field(
        default=None, description="Jobs running (in flight, not parked) under per-key limits."
    )
    startable: int | None = Field(
        default=None,
        description="Parked jobs the per-key concurrency limits let start now (free slots).",
    )
    concurrency_cap: int | None = Field(
        default=None,
        description="Most pods the per-key concurrency limits keep busy while every waiting "
        "job is parked behind them: ceil((running + startable) / jobsPerPod) + headroom.",
    )
    jobs_per_pod: int | None = Field(default=None, description="Jobs per pod used above.")
    headroom: int | None = Field(default=None, description="scaling.idleHeadroom added above.")


class ScalingStatus(_Model):
    """The autoscaler's last decision, explained."""

    demand: int | None = Field(default=None, description="backlog + in-flight + due.")
    desired: int | None = Field(default=None, description="Replicas the autoscaler wants.")
    bound_by: str | None = Field(
        default=None,
        description="Rule that set desired (demand, min, max, delay, idle, "
        "paused, manual, redis-unavailable, rate-limit, concurrency-limit, ...).",
    )
    reason: str | None = Field(default=None, description="The decision in words.")
    last_scale_time: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When replicas were last changed by the operator.",
    )
    memory: ScalingMemoryStatus | None = Field(
        default=None, description="Autoscaler memory (internal; survives operator restarts)."
    )
    limit: ScalingLimitStatus | None = Field(
        default=None,
        description="Rate-limit and per-key concurrency figures (boundBy rate-limit or "
        "concurrency-limit when they set desired).",
    )


class ScheduleStatus(_Model):
    """One schedule's last and next tick."""

    name: str = Field(description="Schedule name.")
    last_tick: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Last tick handled."
    )
    last_job_id: str | None = Field(default=None, description="Job id of the last fired tick.")
    last_outcome: str | None = Field(
        default=None, description="fired, exists, skipped, replaced, missed or error."
    )
    next_tick: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="Next tick."
    )
    missed: int | None = Field(default=None, description="Ticks not fired (outage, suspend).")


class BackgroundQueueStatus(_Model):
    """Observed state, written only by the operator."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation last reconciled."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, RedisReachable, Scaling, Degraded.",
    )
    replicas: int | None = Field(default=None, description="Worker pods (Deployment replicas).")
    ready_replicas: int | None = Field(default=None, description="Worker pods ready.")
    desired_replicas: int | None = Field(default=None, description="Replicas wanted now.")
    selector: str | None = Field(
        default=None, description="Label selector of the worker pods (scale subresource)."
    )
    queue: QueueStatus | None = Field(default=None, description="Queue figures.")
    scaling: ScalingStatus | None = Field(default=None, description="Last scaling decision.")
    schedules: list[ScheduleStatus] | None = Field(default=None, description="Per schedule.")
    next_tick: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="The earliest next tick of all schedules.",
    )


def parse_spec(spec: Any) -> BackgroundQueueSpec:
    """Validate a BackgroundQueue ``spec`` mapping (camelCase) into the model.

    Raises :class:`InvalidSpecError` naming every offending field (``spec.worker.image: ...``)
    so the message can go straight into a condition and an event.
    """
    try:
        return BackgroundQueueSpec.model_validate(dict(spec or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in ("spec", *err["loc"]))
            problems.append(f"{where}: {err['msg']}")
        raise InvalidSpecError("invalid spec: " + "; ".join(problems)) from None


def queue_name(namespace: str, name: str) -> str:
    """The full queue name of a BackgroundQueue (docs/design.md: ``<namespace>/<name>``)."""
    return f"{namespace}/{name}"


def deployment_name(name: str) -> str:
    """The worker Deployment's deterministic name."""
    return f"bgq-{name}"
