"""hack/cluster/portal.py on a real network namespace of its own (root, ``ip netns``).

The portal is how the host reaches the test cluster, whose network lives in a namespace of its
own: these tests give it a throwaway namespace with an echo server inside and check what the
e2e suite relies on: bytes both ways, large transfers, many connections at once, half-close,
a refused target, and clear errors for bad arguments.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import free_port
from tests.e2e.kube import Portal, netns_argv, wait_for

PORTAL = Path(__file__).resolve().parents[3] / "hack" / "cluster" / "portal.py"

# Echoes what it reads; on EOF from the client it sends "bye" and closes (a half-close test).
ECHO = """
import socket, sys, threading
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=128)
print("listening", flush=True)
def serve(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
        c.sendall(b"bye")
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("these tests need root (ip netns)", pytrace=False)
    name = f"bgq-portal-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def echo(netns: str) -> Iterator[int]:
    """An echo server on 127.0.0.1:<port> *inside* the namespace; yields the port."""
    port = free_port()
    proc = subprocess.Popen([*netns_argv(netns), sys.executable, "-c", ECHO, str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "listening"
        yield port
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(65536, n - len(buf)))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def test_the_host_loopback_reaches_a_server_only_inside_the_namespace(
        netns: str, echo: int) -> None:
    # nothing listens on the host's side of that port: only the portal makes it reachable
    with pytest.raises(ConnectionRefusedError):
        connect(echo).close()
    portal = Portal(netns, [(echo, "127.0.0.1", echo)]).start()
    try:
        with connect(echo) as s:
            s.sendall(b"ping")
            assert recv_exactly(s, 4) == b"ping"
    finally:
        portal.stop()


def test_large_transfers_many_connections_and_half_close(netns: str, echo: int) -> None:
    host_port = free_port()
    portal = Portal(netns, [(host_port, "127.0.0.1", echo)]).start()
    payload = os.urandom(4 * 1024 * 1024)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with connect(host_port) as s:
                data = payload[i * 1000:] if i else payload
                got: list[bytes] = []
                reader = threading.Thread(
                    target=lambda: got.append(recv_exactly(s, len(data))))
                reader.start()
                s.sendall(data)
                reader.join(30)
                assert got and got[0] == data
                s.shutdown(socket.SHUT_WR)  # half-close: the server still answers after EOF
                assert recv_exactly(s, 3) == b"bye"
                assert s.recv(1) == b""
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not [t for t in threads if t.is_alive()], "a connection hung"
        assert not errors, errors
    finally:
        portal.stop()


def test_a_target_that_refuses_closes_the_client_connection(netns: str) -> None:
    host_port, nothing = free_port(), free_port()
    portal = Portal(netns, [(host_port, "127.0.0.1", nothing)]).start()
    try:
        with connect(host_port) as s:
            try:
                data = s.recv(1)
            except ConnectionResetError:
                data = b""
            assert data == b""  # closed at once, not left hanging until the timeout
        # and the portal keeps serving
        assert portal.proc is not None and portal.proc.poll() is None
    finally:
        portal.stop()


def test_bad_arguments_and_a_missing_namespace_are_clear_errors(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, str(PORTAL), "--netns", "/run/netns/x",
                          "--forward", "127.0.0.1:80"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "not LISTEN=TARGET" in bad.stderr
    missing = subprocess.run(
        [sys.executable, str(PORTAL), "--netns", str(tmp_path / "no-such-netns"),
         "--forward", f"127.0.0.1:{free_port()}=127.0.0.1:1"], capture_output=True, text=True,
        check=False)
    assert missing.returncode == 1 and "no-such-netns" in missing.stderr, missing.stderr


def test_stopping_the_portal_frees_its_port(netns: str, echo: int) -> None:
    host_port = free_port()
    portal = Portal(netns, [(host_port, "127.0.0.1", echo)]).start()
    portal.stop()

    def refused() -> bool:
        try:
            connect(host_port).close()
        except ConnectionRefusedError:
            return True
        return False
    wait_for(refused, 10, "the portal's port to be closed")
