#!/usr/bin/env python3
"""A minimal cluster DNS for the test cluster: Service names to ClusterIPs, stdlib only.

Answers UDP A queries for ``<service>.<namespace>.svc.<domain>`` with the Service's ClusterIP
(a headless Service: the ready addresses of its EndpointSlices). Every other name gets NXDOMAIN
(nothing leaves the machine anyway), AAAA and other types for known names get an empty answer.
The kubelet points pods at it (``clusterDNS``), so the usual ``redis.infra.svc`` and short names
(via the pod's search path) work. Started and stopped by ``hack/cluster/up`` / ``down``.

It reads Services from the API server with the admin client certificate, caching them and
refreshing when a name is not found (at most every 0.2 s: new Services resolve at once) and
when the cache is older than 2 s.

Usage: dns.py --listen 10.214.0.1 --api https://10.213.0.1:6443 --pki DIR [--domain cluster.local]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.request
from typing import Any

TTL = 5
NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
TYPE_A = 1


class ServiceCache:
    """Service name -> IPv4 addresses, loaded from the API server."""

    def __init__(self, api: str, pki: str, domain: str) -> None:
        self.api = api.rstrip("/")
        self.suffix = f".svc.{domain}"
        self.ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
        self.ctx.load_cert_chain(f"{pki}/admin.crt", f"{pki}/admin.key")
        self.records: dict[str, list[str]] = {}
        self.loaded = 0.0
        self.lock = threading.Lock()

    def _get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.api + path, context=self.ctx, timeout=3) as resp:
            data: dict[str, Any] = json.load(resp)
            return data

    def refresh(self) -> None:
        services = self._get("/api/v1/services")["items"]
        slices = self._get("/apis/discovery.k8s.io/v1/endpointslices")["items"]
        ready: dict[tuple[str, str], list[str]] = {}
        for s in slices:
            svc = s["metadata"].get("labels", {}).get("kubernetes.io/service-name")
            if not svc or s.get("addressType") != "IPv4":
                continue
            for ep in s.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready", True):
                    ready.setdefault((s["metadata"]["namespace"], svc), []).extend(ep["addresses"])
        records: dict[str, list[str]] = {}
        for s in services:
            ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
            ips = [ip for ip in s["spec"].get("clusterIPs") or [s["spec"].get("clusterIP", "")]
                   if ip and ip != "None" and ipaddress.ip_address(ip).version == 4]
            if s["spec"].get("clusterIP") == "None":
                ips = sorted(set(ready.get((ns, name), [])))
            records[f"{name}.{ns}{self.suffix}"] = ips
        with self.lock:
            self.records, self.loaded = records, time.monotonic()

    def lookup(self, name: str) -> list[str] | None:
        """Addresses for ``name``; None if no such Service."""
        with self.lock:
            found = self.records.get(name)
            age = time.monotonic() - self.loaded
        if (found is None and age > 0.2) or age > 2:
            self.refresh()
            with self.lock:
                found = self.records.get(name)
        return found


def parse_question(data: bytes) -> tuple[int, int, str, int, bytes]:
    """(id, flags, lower-case name, qtype, raw question section) of a query."""
    qid, flags, qdcount = struct.unpack("!3H", data[:6])
    if qdcount != 1:
        raise ValueError("expected exactly one question")
    labels, i = [], 12
    while True:
        length = data[i]
        i += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed name in question")
        labels.append(data[i:i + length].decode("ascii").lower())
        i += length
    qtype = struct.unpack("!H", data[i:i + 2])[0]
    return qid, flags, ".".join(labels), qtype, data[12:i + 4]


def answer(data: bytes, cache: ServiceCache) -> bytes | None:
    try:
        qid, flags, name, qtype, question = parse_question(data)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        return None
    rcode, ips = NOERROR, []
    try:
        found = cache.lookup(name) if name.endswith(cache.suffix) else None
    except OSError:
        found, rcode = None, SERVFAIL
    if found is None and rcode == NOERROR:
        rcode = NXDOMAIN
    elif found is not None and qtype == TYPE_A:
        ips = found
    out_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | rcode  # QR, opcode+RD, AA, RA
    msg = struct.pack("!6H", qid, out_flags, 1, len(ips), 0, 0) + question
    for ip in ips:
        msg += struct.pack("!HHHIH", 0xC00C, TYPE_A, 1, TTL, 4) + ipaddress.IPv4Address(ip).packed
    return msg


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--api", required=True)
    parser.add_argument("--pki", required=True)
    parser.add_argument("--domain", default="cluster.local")
    args = parser.parse_args(argv)
    cache = ServiceCache(args.api, args.pki, args.domain)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            reply = answer(data, cache)
            if reply is not None:
                sock.sendto(reply, self.client_address)

    server = socketserver.ThreadingUDPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    print(f"cluster DNS on {args.listen}:{args.port} for *.svc.{args.domain}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
