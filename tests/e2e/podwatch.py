"""Watch pods die, precisely: the drain tests (tests/e2e/test_drain.py) and bench/drain_soak.py.

Two observers of the real cluster, each a background thread:

* :class:`ContainerEvents` follows containerd's event stream (``ctr events``) on the host and
  timestamps each worker container's start and exit the moment containerd reports it (the pod
  status lags behind by up to the kubelet's 1 s relist). It can run a callback on a container's
  start, which is how a test deletes a pod a controlled delay after its container started.
* :class:`PodWatch` keeps a Kubernetes watch on a namespace's pods and records each pod's last
  container state, so the ``terminated`` state (exit code, reason) the kubelet reports is kept even
  after the pod object is gone.

:class:`Api` is a small client of the API server (the admin kubeconfig's client certificate): a
deletion through it takes milliseconds, where spawning ``kubectl`` takes a few hundred on a busy
machine, which matters when the delay under test is 0.1 s.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

WORKER_CONTAINER = "worker"
SIGKILL_EXIT = 137  # 128 + 9: what the runtime reports for a container killed at the grace period


class Api:
    """A minimal API-server client from a kubeconfig with client-certificate auth."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
        tls.load_cert_chain(user["client-certificate"], user["client-key"])
        self._args: dict[str, Any] = {"base_url": cluster["server"], "verify": tls}
        self.http = httpx.Client(timeout=30, **self._args)

    def stream_client(self) -> httpx.Client:
        """A separate client for a long-lived watch (no read timeout)."""
        return httpx.Client(timeout=httpx.Timeout(30, read=None), **self._args)

    def delete_pod(self, namespace: str, name: str) -> float:
        """Delete a pod with its own grace period (what a scale-down does); returns the
        ``time.time()`` just before the request was sent."""
        sent = time.time()
        resp = self.http.delete(f"/api/v1/namespaces/{namespace}/pods/{name}")
        if resp.status_code not in (200, 202, 404):
            raise RuntimeError(f"DELETE pod {namespace}/{name}: {resp.status_code} {resp.text}")
        return sent

    def create_pod(self, namespace: str, pod: dict[str, Any]) -> None:
        resp = self.http.post(f"/api/v1/namespaces/{namespace}/pods", json=pod)
        if resp.status_code != 201:
            raise RuntimeError(f"POST pod in {namespace}: {resp.status_code} {resp.text}")

    def close(self) -> None:
        self.http.close()


# ---------------------------------------------------------------- containerd events
@dataclass
class Container:
    """One worker container as containerd saw it (times are ``time.time()`` at receipt)."""

    id: str
    namespace: str
    pod: str
    started: float
    pid: int
    exited: float | None = None
    exit_status: int | None = None
    pod_uid: str = ""

    def log_files(self, run_dir: Path) -> list[Path]:
        """The kubelet's log files of this container (gone once the pod is removed)."""
        pod_dir = run_dir / "pod-logs" / f"{self.namespace}_{self.pod}_{self.pod_uid}"
        return sorted((pod_dir / WORKER_CONTAINER).glob("*.log"))


class ContainerEvents:
    """``ctr events`` for containers named ``worker`` in the given Kubernetes namespaces.

    ``on_start(container)`` runs on a fresh thread for each start (so one slow callback never
    delays the next); ``on_exit(container)`` runs on the reader thread right at the exit, while
    the container's log file still exists (keep it short). The state directory is where
    containerd keeps each task's OCI bundle; its annotations say which pod a container belongs to.
    """

    def __init__(self, run_dir: Path, namespaces: set[str],
                 on_start: Callable[[Container], None] | None = None,
                 on_exit: Callable[[Container], None] | None = None) -> None:
        self.sock = run_dir / "containerd" / "containerd.sock"
        self.bundles = run_dir / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
        self.namespaces = namespaces
        self.on_start = on_start
        self.on_exit = on_exit
        self.containers: dict[str, Container] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.proc = subprocess.Popen(
            ["ctr", "--address", str(self.sock), "events"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, name="ctr-events", daemon=True)
        self.thread.start()

    def _annotations(self, container_id: str) -> dict[str, str]:
        try:
            spec = json.loads((self.bundles / container_id / "config.json").read_text())
        except (OSError, ValueError):
            return {}
        annotations: dict[str, str] = spec.get("annotations") or {}
        return annotations

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.time()
            topic_at = line.find(" /tasks/")
            if topic_at < 0:
                continue
            topic, _, payload = line[topic_at + 1:].partition(" ")
            if topic not in ("/tasks/start", "/tasks/exit"):
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            cid = event.get("container_id", "")
            if topic == "/tasks/start":
                self._started(cid, int(event.get("pid", 0)), now)
            elif event.get("id", cid) == cid:  # the task's own exit, not an exec's
                with self.lock:
                    c = self.containers.get(cid)
                    if c is not None:
                        c.exited, c.exit_status = now, int(event.get("exit_status", 0))
                        self.changed.notify_all()
                if c is not None and self.on_exit is not None:
                    self.on_exit(c)

    def _started(self, cid: str, pid: int, now: float) -> None:
        ann = self._annotations(cid)
        if (ann.get("io.kubernetes.cri.container-type") != "container"
                or ann.get("io.kubernetes.cri.container-name") != WORKER_CONTAINER
                or ann.get("io.kubernetes.cri.sandbox-namespace") not in self.namespaces):
            return
        c = Container(cid, ann["io.kubernetes.cri.sandbox-namespace"],
                      ann.get("io.kubernetes.cri.sandbox-name", ""), now, pid,
                      pod_uid=ann.get("io.kubernetes.cri.sandbox-uid", ""))
        with self.lock:
            self.containers[cid] = c
            self.changed.notify_all()
        if self.on_start is not None:
            threading.Thread(target=self.on_start, args=(c,), daemon=True).start()

    def by_pod(self, pod: str) -> Container | None:
        with self.lock:
            return self._last(pod)

    def _last(self, pod: str) -> Container | None:
        found = [c for c in self.containers.values() if c.pod == pod]
        return found[-1] if found else None

    def wait_exit(self, pod: str, timeout: float) -> Container:
        """Block until the pod's (last) worker container has exited; its ``exit_status`` is then
        what the process returned, as containerd saw it."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while (c := self._last(pod)) is None or c.exited is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for the worker "
                                       f"container of {pod} to exit (containerd saw: {c})")
                self.changed.wait(min(left, 1.0))
            return c

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


# ---------------------------------------------------------------- the pod watch
@dataclass
class PodRecord:
    """What the watch saw of one pod; ``terminated`` is the worker container's last terminated
    state (``exitCode``, ``reason``, ``signal``, ``startedAt``, ``finishedAt``)."""

    name: str
    uid: str
    image: str = ""
    ready_seen: bool = False
    deletion_requested: bool = False
    deletion_seen: float = 0.0  # time.time() when the watch first saw the deletionTimestamp
    deleted: bool = False
    restarts: int = 0
    terminated: dict[str, Any] | None = None
    phase: str = ""
    events: list[str] = field(default_factory=list)


class PodWatch:
    """A Kubernetes watch on the pods of one namespace (reconnects; keeps every pod's record)."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.pods: dict[str, PodRecord] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._stop = threading.Event()
        self._client = api.stream_client()
        listing = api.http.get(f"/api/v1/namespaces/{namespace}/pods")
        listing.raise_for_status()
        body = listing.json()
        for item in body["items"]:
            self._update("ADDED", item)
        self._rv = body["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, name=f"watch-{namespace}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._client.stream(
                        "GET", f"/api/v1/namespaces/{self.namespace}/pods",
                        params={"watch": "1", "resourceVersion": self._rv,
                                "allowWatchBookmarks": "true"}) as resp:
                    for line in resp.iter_lines():
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":  # e.g. 410 Gone: start over from now
                            self._rv = ""
                            break
                        self._rv = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._update(event["type"], obj)
            except (httpx.HTTPError, ValueError):
                if self._stop.is_set():
                    return
                time.sleep(0.2)

    def _update(self, kind: str, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status", {})
        with self.lock:
            rec = self.pods.get(meta["name"])
            if rec is None or rec.uid != meta["uid"]:
                rec = self.pods[meta["name"]] = PodRecord(meta["name"], meta["uid"])
            containers = pod.get("spec", {}).get("containers", [])
            rec.image = next((c["image"] for c in containers if c["name"] == WORKER_CONTAINER),
                             rec.image)
            rec.phase = status.get("phase", rec.phase)
            if meta.get("deletionTimestamp") and not rec.deletion_requested:
                rec.deletion_requested, rec.deletion_seen = True, time.time()
            rec.deleted |= kind == "DELETED"
            rec.ready_seen |= any(c.get("type") == "Ready" and c.get("status") == "True"
                                  for c in status.get("conditions", []))
            for cs in status.get("containerStatuses", []):
                if cs.get("name") != WORKER_CONTAINER:
                    continue
                rec.restarts = cs.get("restartCount", 0)
                term = (cs.get("state") or {}).get("terminated") \
                    or (cs.get("lastState") or {}).get("terminated")
                if term:
                    rec.terminated = term
            rec.events.append(kind)
            self.changed.notify_all()

    def wait(self, predicate: Callable[[dict[str, PodRecord]], bool], timeout: float,
             what: str) -> None:
        """Block until ``predicate(pods)`` holds (evaluated under the lock on every change)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate(self.pods):
                left = deadline - time.monotonic()
                if left <= 0:
                    summary = {n: (r.phase, r.deleted, r.terminated) for n, r in self.pods.items()}
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}: "
                                       f"{summary}")
                self.changed.wait(min(left, 1.0))

    def snapshot(self) -> dict[str, PodRecord]:
        with self.lock:
            return dict(self.pods)

    def close(self) -> None:
        self._stop.set()
        self._client.close()


def exit_code(rec: PodRecord, container: Container | None) -> int | None:
    """The worker container's exit code: containerd's (the process's own, from the event stream)
    when it was seen, else the kubelet's reported one.

    Under load the kubelet can report 137 with reason ``ContainerStatusUnknown`` for a container
    that exited on its own: the pod's containers were removed before its status sync read the
    exit ("The container could not be located when the pod was deleted. The container used to
    be Running"), so containerd's word comes first.
    """
    if container is not None and container.exit_status is not None:
        return container.exit_status
    term = rec.terminated or {}
    code = term.get("exitCode")
    return code if isinstance(code, int) else None
