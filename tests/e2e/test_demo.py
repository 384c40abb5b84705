"""`make demo`, the README's first command, end to end in its short mode on the real cluster.

It runs exactly what a user runs (``make demo``, with ``DEMO_ARGS`` for the short mode, plain
output, its own namespace and a JSON copy of the summary): the precheck, the image builds, the
chart with the in-cluster trial Redis (Debian's redis-server, built registry-free) and the
gateway, the demo queue, a burst of 40 jobs from a pod through the Python client and the HTTP
gateway, the watch until the queue is back at zero. The figures of the summary are then
checked: every job succeeded, none lost, none interrupted, the flaky jobs were retried, the queue
scaled up from zero and back to zero.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from tests.e2e.kube import Cluster

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)  # ~1.5 min warm; image rebuilds on a loaded machine take longer
def test_make_demo_short_mode(cluster: Cluster, tmp_path: Path) -> None:
    namespace = f"e2e-demo-{secrets.token_hex(3)}"
    summary_path = tmp_path / "summary.json"
    args = f"--short --plain --namespace {namespace} --summary-json {summary_path}"
    try:
        proc = subprocess.run(
            ["make", "--no-print-directory", "demo", f"DEMO_ARGS={args}"],
            cwd=ROOT, capture_output=True, text=True, timeout=560, check=False,
            env={**os.environ, "BGQ_CLUSTER_FROM_PYTEST": "1"})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        summary = json.loads(summary_path.read_text())

        assert summary["jobs_enqueued"] == 40, summary
        assert summary["via_client"] == 20 and summary["via_gateway"] == 20, summary
        assert summary["succeeded"] == 40 and summary["jobs_run"] == 40, summary
        assert summary["lost"] == 0 and summary["interrupted"] == 0, summary
        assert summary["retried"] >= 4, summary  # one job in ten fails once, then succeeds
        assert summary["scaled_to_zero"], summary
        assert 2 <= summary["max_replicas"] <= 3, summary  # 0 -> maxReplicas (3), then 0
        assert summary["replica_seconds"] > 0, summary
        assert summary["last_job_to_zero_s"] is not None, summary
        assert summary["last_job_to_zero_s"] < 60, summary
        p50, p95 = summary["enqueue_to_start_p50_ms"], summary["enqueue_to_start_p95_ms"]
        assert p50 is not None and p95 is not None and 0 <= p50 <= p95, summary

        # what the user sees: the set-up steps, live lines, the summary and the next commands
        for text in ("local cluster", "helm upgrade --install", "backlog=", "Summary of this run",
                     "lost", "make demo-down", f"get bgq -n {namespace} -o wide"):
            assert text in out, f"{text!r} missing from the demo's output:\n{out[-4000:]}"

        # the in-cluster Redis is the chart's, from the registry-free Debian image
        (redis_pod,) = cluster.pods(namespace, "app.kubernetes.io/component=redis")
        image = redis_pod["spec"]["containers"][0]["image"]
        assert image.startswith("bgq.local/redis:"), image
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "bgqdemo", "down",
             "--namespace", namespace],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT / "hack" / "demo")})
        assert down.returncode == 0, down.stdout + down.stderr
