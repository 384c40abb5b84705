#!/usr/bin/env python3
"""Loopback portals into the test cluster's network namespace: TCP forwarding, stdlib only.

The test cluster lives in a network namespace of its own (``hack/cluster/up``), so the host's
root namespace keeps its addresses, routes, iptables rules and network sysctls. Host-side
tools reach the cluster only through the host's loopback: each ``--forward L=T`` listens on
``L`` (an address of the namespace this process *starts* in, e.g. ``127.0.0.1:6443``) and
connects every accepted connection to ``T`` inside ``--netns`` (e.g. the API server at
``10.213.0.1:6443``).

How: the listening sockets are bound first, in the starting namespace; then the process enters
the cluster's namespace with setns(2) (a socket keeps the namespace it was created in, so the
listeners stay on the host's loopback), and every outgoing connection is made from there. One
process and one thread; no fork or exec per connection, unlike ``socat ... EXEC:nsenter``.
socat cannot do this without a fork and an exec per connection, and no maintained library ships a
namespace-crossing forwarder. Hence this one.

Usage:
  portal.py --netns /run/netns/bgq-cluster --forward 127.0.0.1:6443=10.213.0.1:6443 [--forward ...]
It prints ``ready`` on stdout once every listener is bound (callers may wait for that line),
and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000
CHUNK = 256 * 1024


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def parse_forward(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    listen, sep, target = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"not LISTEN=TARGET: {text!r}")
    return parse_addr(listen), parse_addr(target)


def enter_netns(path: str) -> None:
    """setns(2) into the network namespace at ``path`` (the whole process: one thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def listener(addr: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be talking
    except (ConnectionError, OSError):
        writer.transport.abort()


async def serve(socks: list[tuple[socket.socket, tuple[str, int]]]) -> None:
    async def handle(target: tuple[str, int], c_reader: asyncio.StreamReader,
                     c_writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except OSError:  # refused, unreachable, or the 10 s timeout (a TimeoutError)
            c_writer.transport.abort()  # the client sees a reset, as with nothing listening
            return
        for w in (c_writer, t_writer):
            s = w.get_extra_info("socket")
            if s is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(c_reader, t_writer), pipe(t_reader, c_writer))
        for w in (c_writer, t_writer):
            w.close()

    servers = []
    for sock, target in socks:
        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                            target: tuple[str, int] = target) -> None:
            await handle(target, r, w)
        servers.append(await asyncio.start_server(on_client, sock=sock, limit=CHUNK))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--netns", required=True, help="path of the target network namespace")
    parser.add_argument("--forward", type=parse_forward, action="append", required=True,
                        metavar="LISTEN=TARGET")
    args = parser.parse_args(argv)
    try:
        socks = [(listener(listen), target) for listen, target in args.forward]
        enter_netns(args.netns)
    except OSError as exc:
        print(f"portal: {exc}", file=sys.stderr)
        return 1
    asyncio.run(serve(socks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
