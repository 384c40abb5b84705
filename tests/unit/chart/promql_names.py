"""Metric names in PromQL expressions, and the names bgq really exports.

The dashboard and the alerts must only name metrics that exist (a panel over a misspelt metric
silently shows nothing, an alert over one never fires). The exported names come from the real
registries: a worker's (built by ``bgq.worker.Worker``) and the operator's.
"""

from __future__ import annotations

import re

# Series Prometheus itself makes (not exported by bgq, but always there when a target is scraped).
PROMETHEUS_SERIES = frozenset({"up"})

_KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
        "unless", "offset", "inf", "nan", "atan2",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])\s*(\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels excluded)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names() -> set[str]:
    """Every sample name bgq exports: worker and operator (counters end in ``_total``,
    histograms give ``_bucket``/``_count``/``_sum``)."""
    from prometheus_client.registry import CollectorRegistry

    from bgq.protocol import QueueName
    from bgq.settings import Settings
    from bgq.worker import Worker
    from bgq_operator import metrics as operator_metrics

    worker = Worker(Settings(), QueueName("ns", "q"))
    registries: list[CollectorRegistry] = [worker.metrics.registry, operator_metrics.REGISTRY]
    out: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            if family.type == "counter":
                out.add(f"{family.name}_total")
            elif family.type == "histogram":
                out |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum")}
            else:
                out.add(family.name)
    return out
