"""Helpers for end-to-end tests on the real single-node cluster of ``hack/cluster``.

The shell scripts are the single source of truth for paths and addresses: ``hack/cluster/env``
prints them and :func:`cluster_env` reads that. :class:`Cluster` wraps the built ``kubectl`` and
``helm`` (never ``/usr/bin/kubectl``: on this machine it is an unrelated 1.32 dispatcher) with the
cluster's admin kubeconfig, and :class:`HostRedis` is a redis-server that pods can reach.

The cluster lives in a network namespace of its own (``hack/cluster/up``): the test process, in
the host's root namespace, reaches the API server and the services it starts for pods only
through loopback portals (``hack/cluster/portal.py``, :class:`Portal`). Services pods must reach
(redis-server, an operator run as a host process) run inside the cluster's namespace
(:class:`NetnsProcess`), where the pods' gateway address ``host_ip`` is.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK = REPO_ROOT / "hack" / "cluster"

T = TypeVar("T")
Manifest = Mapping[str, Any] | Sequence[Mapping[str, Any]] | str


class ClusterError(RuntimeError):
    """The test cluster could not be started, reached or told to do something."""


PORTAL = HACK / "portal.py"


class Stoppable(Protocol):
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


def stop_process(proc: Stoppable, timeout: float = 10) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL and reap: the teardown of every
    child process the e2e fixtures and benchmarks start."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Portal:
    """``hack/cluster/portal.py`` as a child process: each ``(port, host, target_port)`` makes the
    host's ``127.0.0.1:port`` a forward to ``host:target_port`` inside the network namespace at
    ``netns_path``."""

    def __init__(self, netns_path: str, forwards: Sequence[tuple[int, str, int]]) -> None:
        self.netns_path = netns_path
        self.forwards = list(forwards)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Portal:
        argv = [sys.executable, str(PORTAL), "--netns", self.netns_path]
        argv += [f"--forward=127.0.0.1:{p}={host}:{t}" for p, host, t in self.forwards]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()  # "ready" once bound, or EOF when it failed
        if line.strip() != "ready":
            self.proc.wait(10)
            raise ClusterError(f"portal {self.forwards} failed: {self.proc.stderr.read()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                stop_process(self.proc)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
            self.proc = None


def netns_argv(netns_path: str) -> list[str]:
    """The prefix that runs a command inside the cluster's network namespace (only that one:
    files, PIDs and mounts stay the host's)."""
    return ["nsenter", f"--net={netns_path}"]


class NetnsProcess:
    """A host process inside the cluster's network namespace, so it reaches what pods reach
    (the API server at the node IP, services on ``host_ip``), and pods reach it; the ports it
    listens on (its 127.0.0.1) are forwarded from the host's 127.0.0.1 by a :class:`Portal`.

    The few ``subprocess.Popen`` methods the fixtures use are delegated (nsenter execs the
    command, so ``pid`` is the process's own)."""

    def __init__(self, netns_path: str, argv: Sequence[str], *, ports: Sequence[int] = (),
                 **popen: Any) -> None:
        self.portal = Portal(netns_path, [(p, "127.0.0.1", p) for p in ports]).start() \
            if ports else None
        try:
            self.proc: subprocess.Popen[Any] = subprocess.Popen(
                [*netns_argv(netns_path), *argv], **popen)
        except BaseException:
            if self.portal is not None:
                self.portal.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        self.proc.terminate()

    def kill(self) -> None:
        self.proc.kill()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process; once it is gone, its portal goes too."""
        code = self.proc.wait(timeout)
        if self.portal is not None:
            self.portal.stop()
        return code


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cluster_env() -> dict[str, str]:
    """The cluster's settings from ``hack/cluster/env`` (KUBECONFIG, KUBECTL, NODE_IP, ...)."""
    proc = subprocess.run([str(HACK / "env")], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"hack/cluster/env failed: {proc.stderr.strip()}")
    env = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


def run_script(name: str, *args: str, log: Path | None = None, timeout: float = 3600) -> None:
    """Run ``hack/cluster/<name>``; on failure raise with the tail of its output.

    ``BGQ_CLUSTER_FROM_PYTEST`` tells ``up`` that no person asked for the cluster to be kept.
    """
    proc = subprocess.run([str(HACK / name), *args], capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "BGQ_CLUSTER_FROM_PYTEST": "1"})
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise ClusterError(f"hack/cluster/{name} {' '.join(args)} failed "
                           f"(exit {proc.returncode}):\n{tail}")


def build_image(kind: str) -> str:
    """Build (if its content changed) and import a project image; returns the image reference."""
    proc = subprocess.run([str(HACK / "build-image"), kind], capture_output=True, text=True,
                          timeout=1800, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"hack/cluster/build-image {kind} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    Exceptions from the predicate count as "not yet" (the last one is reported). Raises
    ``TimeoutError`` naming ``what`` and the last value or error seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def to_yaml(manifest: Manifest) -> str:
    """YAML text for a manifest dict, a list of them, or YAML text as is."""
    if isinstance(manifest, str):
        return manifest
    if isinstance(manifest, Mapping):
        return yaml.safe_dump(dict(manifest), sort_keys=False)
    return yaml.safe_dump_all([dict(m) for m in manifest], sort_keys=False)


@dataclass
class Cluster:
    """A running test cluster, as the e2e tests see it.

    ``node_ip`` is the node's InternalIP (the API server listens there); ``host_ip`` is the
    gateway address of the pod bridge, which pods use to reach the tests' services. Both exist
    only inside the cluster's network namespace (``netns_path``); the test process reaches the
    API server with ``kubeconfig`` (127.0.0.1, through the portal of ``hack/cluster/up``), a
    :class:`NetnsProcess` with ``kubeconfig_netns`` (the node IP).
    """

    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path
    node_ip: str
    host_ip: str
    node_name: str
    run_dir: Path
    busybox_image: str
    netns_path: str
    kubeconfig_netns: Path
    started_here: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def _run(self, argv: list[str], check: bool, input: str | None,
             timeout: float) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "KUBECONFIG": str(self.kubeconfig)}, check=False)
        if check and proc.returncode != 0:
            raise ClusterError(f"{Path(argv[0]).name} {' '.join(argv[1:])} failed "
                               f"(exit {proc.returncode}): {proc.stderr.strip()}")
        return proc

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raises ClusterError if ``check`` fails."""
        return self._run([str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig), *args],
                         check, input, timeout)

    def helm(self, *args: str, check: bool = True, input: str | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster."""
        if not self.helm_bin.exists():
            raise ClusterError(f"helm is not built at {self.helm_bin}: run hack/cluster/install")
        return self._run([str(self.helm_bin), "--kubeconfig", str(self.kubeconfig), *args],
                         check, input, timeout)

    def apply(self, manifest: Manifest,
              namespace: str | None = None) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` a manifest dict, a list of dicts, or YAML text."""
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=to_yaml(manifest))

    def get_json(self, *args: str) -> dict[str, Any]:
        """``kubectl get ... -o json`` parsed."""
        result: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result

    def pods(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        """Pods of ``namespace`` (optionally by label selector), excluding ones being deleted."""
        sel = ["-l", selector] if selector else []
        items: list[dict[str, Any]] = self.get_json("pods", "-n", namespace, *sel)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def netns_process(self, argv: Sequence[str], *, ports: Sequence[int] = (),
                      env: Mapping[str, str] | None = None, **popen: Any) -> NetnsProcess:
        """Start ``argv`` inside the cluster's network namespace (see :class:`NetnsProcess`),
        with ``KUBECONFIG`` set to the in-namespace admin kubeconfig."""
        full_env = {**os.environ, **(env or {}), "KUBECONFIG": str(self.kubeconfig_netns)}
        return NetnsProcess(self.netns_path, argv, ports=ports, env=full_env, **popen)

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str,
                 interval: float = 0.1) -> T:
        """See :func:`wait_for`."""
        return wait_for(predicate, timeout, what, interval)

    def wait_pods_running(self, namespace: str, selector: str, count: int,
                          timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until exactly ``count`` non-terminating pods match and all are Ready."""
        def ready() -> list[dict[str, Any]] | None:
            pods = self.pods(namespace, selector)
            ok = len(pods) == count and all(
                any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", []))
                for p in pods)
            return pods if ok else None
        return self.wait_for(ready, timeout, f"{count} Ready pod(s) {selector} in {namespace}")

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A pod's logs, or the error text if they cannot be read (for assertion messages)."""
        args = ["logs", "-n", namespace, pod] + (["-c", container] if container else [])
        proc = self.kubectl(*args, check=False)
        return proc.stdout if proc.returncode == 0 else proc.stderr


def load_cluster(started_here: bool = False) -> Cluster:
    env = cluster_env()
    return Cluster(
        kubeconfig=Path(env["KUBECONFIG"]),
        kubectl_bin=Path(env["KUBECTL"]),
        helm_bin=Path(env["HELM"]),
        node_ip=env["NODE_IP"],
        host_ip=env["HOST_IP"],
        node_name=env["NODE_NAME"],
        run_dir=Path(env["RUN_DIR"]),
        busybox_image=env["BUSYBOX_IMAGE"],
        netns_path=env["NETNS_PATH"],
        kubeconfig_netns=Path(env["KUBECONFIG_NETNS"]),
        started_here=started_here,
        env=env,
    )


def cluster_is_up() -> bool:
    """True when ``hack/cluster/status`` reports a ready API server and a Ready node."""
    proc = subprocess.run([str(HACK / "status")], capture_output=True, text=True, check=False)
    return proc.returncode == 0


@dataclass
class HostRedis:
    """A redis-server host process inside the cluster's network namespace, bound to its
    127.0.0.1 and the pod bridge address, with a :class:`Portal` from the host's 127.0.0.1.

    ``url_for_pods`` is what a pod's ``BGQ_REDIS_URL`` should be (also right for a
    :class:`NetnsProcess`); ``url_for_host`` is for the test process itself (same port).
    """

    host_ip: str
    port: int
    workdir: Path
    netns_path: str = ""  # "": the test cluster's (hack/cluster/env)
    proc: NetnsProcess | None = None

    @property
    def url_for_pods(self) -> str:
        return f"redis://{self.host_ip}:{self.port}/0"

    @property
    def url_for_host(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new synchronous client (decode_responses off) for the host side."""
        return redis.Redis.from_url(self.url_for_host)

    def flush(self) -> None:
        """Delete every key: tests sharing this server start from an empty database."""
        with self.client() as r:
            r.flushall()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ClusterError("redis-server is not installed: hack/cluster/install installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        netns = self.netns_path or cluster_env()["NETNS_PATH"]
        self.proc = NetnsProcess(
            netns, [binary, "--port", str(self.port), "--bind", "127.0.0.1", self.host_ip,
                    "--dir", str(self.workdir), "--save", "", "--appendonly", "no",
                    "--protected-mode", "no", "--logfile", str(self.workdir / "redis.log")],
            ports=[self.port], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def ping() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise ClusterError(f"redis-server exited: {log}")
            with self.client() as r:  # errors are "not yet" (the portal listens first)
                return bool(r.ping())
        wait_for(ping, 10, f"redis-server on {self.host_ip}:{self.port}", interval=0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def namespace_name(test_name: str) -> str:
    """A fresh DNS-1123 namespace name derived from a test's name."""
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "t"
    return f"e2e-{base}-{secrets.token_hex(3)}"
