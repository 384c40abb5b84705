"""Fixtures shared by every test layer: a real redis-server the suite starts itself, and a real
Redis Cluster (3 primaries + 3 replicas) and Sentinel setup (master, replica, 3 sentinels)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process started by a fixture; ``restart()`` keeps its data on disk."""

    host: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    persist: bool = False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        args = [
            binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "always",
            "--logfile", str(self.workdir / "redis.log"),
            "--protected-mode", "no",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"redis-server did not start on {self.host}:{self.port}: {log}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole session (no persistence)."""
    server = RedisServer("127.0.0.1", free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session redis-server, flushed before each test so tests do not see each other."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with an fsync'ed append-only file, for restart tests."""
    server = RedisServer("127.0.0.1", free_port(), tmp_path, persist=True)
    server.start()
    yield server
    server.stop()


# ------------------------------------------------------------------ Redis Cluster and Sentinel


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too."""
    for _ in range(100):
        port = free_port(host)
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port + 10000))
            except OSError:
                continue
        return port
    pytest.fail("no free port pair for a cluster node")


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _cmd(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _ping(host: str, port: int) -> bool:
    client = redis.Redis(host=host, port=port, socket_connect_timeout=0.2, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class RedisNode:
    """One redis-server process of a cluster or Sentinel setup (``kill()`` is kill -9).

    With ``netns_path`` (the e2e test cluster's network namespace) it runs inside that
    namespace, bound to ``host`` there, and :meth:`client` reaches it through a loopback portal
    on the same port (tests.e2e.kube.Portal).
    """

    host: str
    port: int
    workdir: Path
    extra: list[str]
    sentinel: bool = False
    netns_path: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    portal: Any = None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def reach_host(self) -> str:
        """The address this process connects to (the portal's, for a node in a namespace)."""
        return "127.0.0.1" if self.netns_path else self.host

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.reach_host, port=self.port, decode_responses=True,
                           socket_connect_timeout=1, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.sentinel:
            conf = self.workdir / "sentinel.conf"
            if not conf.exists():
                conf.write_text("\n".join(self.extra) + "\n")
            args = [binary, str(conf), "--sentinel", "--port", str(self.port),
                    "--bind", self.host, "--dir", str(self.workdir),
                    "--logfile", str(self.workdir / "redis.log"), "--protected-mode", "no"]
        else:
            args = [binary, "--port", str(self.port), "--bind", self.host,
                    "--dir", str(self.workdir), "--save", "", "--appendonly", "no",
                    "--logfile", str(self.workdir / "redis.log"), "--protected-mode", "no",
                    *self.extra]
        if self.netns_path:
            from tests.e2e.kube import Portal, netns_argv

            if self.portal is None:
                self.portal = Portal(self.netns_path, [(self.port, self.host, self.port)]).start()
            args = [*netns_argv(self.netns_path), *args]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_for(lambda: _ping(self.reach_host, self.port), 10, f"redis-server on {self.addr}")

    def kill(self) -> None:
        """SIGKILL (no shutdown save, no goodbye to replicas or the cluster bus)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
        if self.portal is not None:
            self.portal.stop()
            self.portal = None


@dataclass
class RedisClusterServers:
    """A 3-primary + 3-replica Redis Cluster on loopback (``cluster-node-timeout`` 1 s)."""

    nodes: list[RedisNode]

    @property
    def seed_url(self) -> str:
        return f"redis://{self.nodes[0].addr}"

    @property
    def other_seeds(self) -> str:
        return ",".join(n.addr for n in self.nodes[1:3])

    def settings(self) -> Any:
        from bgq.settings import RedisMode, RedisSettings

        return RedisSettings(mode=RedisMode.CLUSTER, url=self.seed_url, nodes=self.other_seeds)

    def live(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.proc is not None]

    def primaries(self) -> list[RedisNode]:
        out = []
        for n in self.live():
            c = n.client()
            try:
                if c.info("replication")["role"] == "master":
                    out.append(n)
            finally:
                c.close()
        return out

    def node_for_key(self, key: str) -> RedisNode:
        """The primary that holds ``key``'s slot now."""
        for n in self.primaries():
            c = n.client()
            try:
                slot = int(_cmd(c, "CLUSTER KEYSLOT", key))
                for lo, hi, *rest in _cmd(c, "CLUSTER SLOTS"):
                    if lo <= slot <= hi:
                        host, port = rest[0][0], int(rest[0][1])
                        return next(x for x in self.nodes if (x.host, x.port) == (host, port))
            finally:
                c.close()
        raise AssertionError(f"no primary holds the slot of {key}")

    def healthy(self) -> bool:
        for n in self.live():
            c = n.client()
            try:
                info = _cmd(c, "CLUSTER INFO")  # redis-py parses it into a dict
                if info.get("cluster_state") != "ok":
                    return False
            except redis.RedisError:
                return False
            finally:
                c.close()
        return True

    def flush(self) -> None:
        for n in self.primaries():
            c = n.client()
            try:
                c.flushall()
                c.script_flush()
            finally:
                c.close()


def start_redis_cluster(workdir: Path, host: str = "127.0.0.1", replicas: int = 1,
                        netns_path: str | None = None) -> RedisClusterServers:
    """Start 3 primaries with ``replicas`` replicas each (cluster-enabled servers) and join them
    with ``redis-cli --cluster create``; with ``netns_path``, inside that network namespace
    (see :class:`RedisNode`)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli is not installed: apt-get install redis-tools")
    nodes = []
    for i in range(3 * (1 + replicas)):
        port = free_port_pair("127.0.0.1" if netns_path else host)
        node = RedisNode(host, port, workdir / f"node{i}", netns_path=netns_path, extra=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"])
        node.start()
        nodes.append(node)
    servers = RedisClusterServers(nodes)
    prefix: list[str] = []
    if netns_path:
        from tests.e2e.kube import netns_argv

        prefix = netns_argv(netns_path)
    done = subprocess.run(
        [*prefix, cli, "--cluster", "create", *(n.addr for n in nodes), "--cluster-replicas",
         str(replicas), "--cluster-yes"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        for n in nodes:
            n.stop()
        pytest.fail(f"redis-cli --cluster create failed: {done.stdout[-2000:]}{done.stderr}")
    _wait_for(servers.healthy, 30, "cluster_state:ok on every node")
    _wait_for(lambda: len(servers.primaries()) == 3, 30, "3 primaries")
    return servers


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """One real 3-primary + 3-replica Redis Cluster for the session."""
    servers = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield servers
    for n in servers.nodes:
        n.stop()


@pytest.fixture
def private_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A cluster of its own, for tests that kill or reshard nodes."""
    servers = start_redis_cluster(tmp_path)
    yield servers
    for n in servers.nodes:
        n.stop()


@dataclass
class SentinelServers:
    """1 master + 1 replica + 3 sentinels on loopback, master name ``bgqmaster``."""

    master: RedisNode
    replica: RedisNode
    sentinels: list[RedisNode]
    name: str = "bgqmaster"

    def settings(self) -> Any:
        from bgq.settings import RedisMode, RedisSettings

        return RedisSettings(
            mode=RedisMode.SENTINEL, url=f"redis://{self.sentinels[0].addr}/0",
            nodes=",".join(s.addr for s in self.sentinels[1:]), sentinel_master=self.name)

    def current_master(self) -> tuple[str, int]:
        for s in self.sentinels:
            if s.proc is None:
                continue
            c = s.client()
            try:
                host, port = _cmd(c, "SENTINEL GET-MASTER-ADDR-BY-NAME", self.name)
                return str(host), int(port)
            except redis.RedisError:
                continue
            finally:
                c.close()
        raise AssertionError("no sentinel answered")

    def all_nodes(self) -> list[RedisNode]:
        return [self.master, self.replica, *self.sentinels]


def start_sentinels(workdir: Path, host: str = "127.0.0.1") -> SentinelServers:
    master = RedisNode(host, free_port(host), workdir / "master", [])
    master.start()
    replica = RedisNode(host, free_port(host), workdir / "replica",
                        ["--replicaof", host, str(master.port)])
    replica.start()
    sentinels = []
    for i in range(3):
        s = RedisNode(host, free_port(host), workdir / f"sentinel{i}", [
            f"sentinel monitor bgqmaster {host} {master.port} 2",
            "sentinel down-after-milliseconds bgqmaster 1000",
            "sentinel failover-timeout bgqmaster 5000",
            "sentinel parallel-syncs bgqmaster 1",
        ], sentinel=True)
        s.start()
        sentinels.append(s)
    servers = SentinelServers(master, replica, sentinels)

    def ready() -> bool:
        c = sentinels[0].client()
        try:
            info = _cmd(c, "SENTINEL MASTER", "bgqmaster")
            fields = dict(zip(info[0::2], info[1::2], strict=False)) if isinstance(info, list) \
                else info
            return int(fields.get("num-other-sentinels", 0)) >= 2 and \
                int(fields.get("num-slaves", 0)) >= 1
        except redis.RedisError:
            return False
        finally:
            c.close()

    _wait_for(ready, 30, "3 sentinels that see the master and its replica")
    return servers


@pytest.fixture
def sentinel_servers(tmp_path: Path) -> Iterator[SentinelServers]:
    """A private Sentinel setup (each test may fail the master over)."""
    servers = start_sentinels(tmp_path)
    yield servers
    for n in servers.all_nodes():
        n.stop()


@pytest.fixture(params=["standalone", "cluster"])
def topology(request: pytest.FixtureRequest, redis_url: str) -> Any:
    """The Redis settings of a flushed standalone server or a flushed cluster."""
    from bgq.settings import RedisSettings

    if request.param == "standalone":
        return RedisSettings(url=redis_url)
    servers: RedisClusterServers = request.getfixturevalue("redis_cluster")
    servers.flush()
    return servers.settings()
