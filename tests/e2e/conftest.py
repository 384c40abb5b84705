"""Fixtures for end-to-end tests on a real single-node Kubernetes cluster (``hack/cluster``).

Every test under ``tests/e2e`` gets the marker ``e2e`` automatically (``make test-fast``
deselects them). The tests need root: the cluster runs containerd, a kubelet and pod networks.

Session fixtures (shared by every e2e test; names are a contract, keep them):

``cluster`` -> :class:`tests.e2e.kube.Cluster`
    Reuses a running cluster, else runs ``hack/cluster/up`` (which installs Debian packages and
    builds the Kubernetes binaries and helm first when they are missing: ~10 min cold, seconds
    warm). At session end it runs ``hack/cluster/down`` only if this session started it, no other
    pytest session is still using it, nobody ran ``hack/cluster/up`` by hand since (that marks the
    cluster "keep"), and ``BGQ_KEEP_CLUSTER`` is unset. Attributes and methods:
    ``.kubeconfig`` (Path), ``.kubectl(*args, check=True, input=None)`` -> CompletedProcess,
    ``.apply(manifest_dict_or_list_or_yaml, namespace=None)``, ``.get_json(*args)``,
    ``.pods(namespace, selector)``, ``.wait_for(predicate, timeout, what)`` (returns the
    predicate's truthy value), ``.wait_pods_running(namespace, selector, count)``,
    ``.logs(namespace, pod)``, ``.helm(*args)``, ``.node_ip``, ``.host_ip`` (the address pods use
    to reach the tests' services), ``.busybox_image`` (``bgq.local/busybox:1``),
    ``.netns_process(argv, ports=...)`` (a host process inside the cluster's network namespace,
    e.g. an operator that must reach Redis at the pods' address; its ports get loopback
    portals), ``.netns_path``, ``.kubeconfig_netns``. The cluster's network is in a namespace of
    its own: the test process reaches it only through loopback portals (docs/cluster.md).
``cluster_redis`` -> :class:`tests.e2e.kube.HostRedis`
    A redis-server inside the cluster's network namespace, reachable from pods
    (``.url_for_pods``) and from the test (``.url_for_host``, a portal on the same port),
    ``.client()``, ``.flush()``. Shared by the session: flush it or use unique queue names.
``worker_image`` / ``operator_image`` -> str
    References of the project images built from the working tree and imported into the cluster's
    containerd (``bgq.local/bgq-worker:<content hash>``); use ``imagePullPolicy: Never``. The
    worker image also has ``tests/e2e/app`` (module ``e2e_tasks``) on its PYTHONPATH. Both run as
    uid 10001 and work with ``readOnlyRootFilesystem: true`` plus an emptyDir on ``/tmp``.

Function fixture:

``namespace`` -> str
    A fresh namespace per test (its ``default`` ServiceAccount exists), deleted afterwards.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test modules import the helpers as ``tests.e2e.kube`` however pytest was started.
if str(Path(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.e2e.kube import (
    Cluster,
    ClusterError,
    HostRedis,
    build_image,
    cluster_env,
    cluster_is_up,
    free_port,
    load_cluster,
    namespace_name,
    run_script,
)

E2E_DIR = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/e2e as ``e2e`` before ``-m`` selection runs."""
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


_PREPARE_ERROR: list[str] = []
NOT_ROOT = ("the e2e tests need root (containerd, kubelet, pod networking): run them as root, "
            "or deselect them with `make test-fast` / -m 'not e2e'")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install packages, build Kubernetes/helm and the image base layers before any test runs.

    A cold build takes ~10 minutes on 2 cores: done here, it is outside every test's timeout.
    Warm, it takes well under a second. Errors are reported by the ``cluster`` fixture.
    """
    if os.geteuid() != 0 or not any(E2E_DIR in item.path.parents for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("e2e: preparing the test cluster (hack/cluster/install; the first "
                            "run builds Kubernetes from source, ~10 min)")
    try:
        run_script("install", timeout=3600)
        for kind in ("worker", "operator", "redis"):  # redis: make demo (test_demo.py)
            run_script("build-image", kind, "--layers-only", timeout=1800)
    except (ClusterError, OSError, subprocess.TimeoutExpired) as exc:
        _PREPARE_ERROR.append(str(exc))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail(NOT_ROOT, pytrace=False)
    if _PREPARE_ERROR:
        pytest.fail(f"preparing the test cluster failed: {_PREPARE_ERROR[0]}", pytrace=False)
    env = cluster_env()
    cache = Path(env["CACHE_DIR"])
    cache.mkdir(parents=True, exist_ok=True)
    # Every session holds a shared lock while it uses the cluster; the session that started the
    # cluster tears it down only if it can upgrade to an exclusive lock (no other users).
    users = (cache / "cluster-users.lock").open("w")
    fcntl.flock(users, fcntl.LOCK_SH)
    started = False
    try:
        if not cluster_is_up():
            try:
                run_script("up", log=Path(env["RUN_DIR"]) / "logs" / "pytest-up.log")
            except ClusterError as exc:
                pytest.fail(f"the test cluster did not come up: {exc}", pytrace=False)
            started = True
        yield load_cluster(started_here=started)
    finally:
        kept = (Path(env["RUN_DIR"]) / "state" / "keep").exists()  # someone ran `up` by hand
        if started and not kept and not os.environ.get("BGQ_KEEP_CLUSTER"):
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another session still uses the cluster; it stays up
            else:
                run_script("down")
        users.close()


@pytest.fixture(scope="session")
def cluster_redis(cluster: Cluster) -> Iterator[HostRedis]:
    with tempfile.TemporaryDirectory(prefix="bgq-e2e-redis-") as tmp:
        server = HostRedis(host_ip=cluster.host_ip, port=free_port(), workdir=Path(tmp),
                           netns_path=cluster.netns_path)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def worker_image(cluster: Cluster) -> str:
    return build_image("worker")


@pytest.fixture(scope="session")
def operator_image(cluster: Cluster) -> str:
    return build_image("operator")


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = namespace_name(request.node.name)
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name,
                                check=False).returncode == 0,
        30, f"the default ServiceAccount in {name}")
    try:
        yield name
    finally:
        # Pods first, without grace, so the namespace goes quickly and frees the node.
        cluster.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force",
                        "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
