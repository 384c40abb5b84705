"""`make demo` / `make demo-down`: ``python -m bgqdemo [up|down] [options]``.

``up`` (the default) brings up the local cluster, builds the images, installs the chart with the
demo values, applies the demo queue, runs a scenario with a live view and prints the summary
measured from the run. Exit status 0 only if nothing was lost or interrupted and the queue scaled
back to zero. ``down`` removes what ``up`` made in the namespace (the cluster itself is stopped
by ``make demo-down`` with ``hack/cluster/down``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tests.e2e.kube import ClusterError, load_cluster

from bgqdemo import stack
from bgqdemo.run import run_scenario
from bgqdemo.summary import Summary


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def print_summary(console: Console, s: Summary, namespace: str, timings: dict[str, float]) -> None:
    ok = s.lost == 0 and s.interrupted == 0 and s.scaled_to_zero
    table = Table(title=f"Summary of this run ({s.scenario}), measured", title_justify="left",
                  show_header=False, expand=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_column("how it was measured", style="dim")
    rows = [
        ("jobs enqueued", f"{s.jobs_enqueued}",
         f"{s.via_client} via the Python client, {s.via_gateway} via the HTTP gateway"),
        ("jobs run", f"{s.jobs_run}", "jobs whose task started (its own record in Redis)"),
        ("succeeded", f"{s.succeeded}", f"{s.retried} after a retry"
         + (" (one job in ten fails once on purpose)" if s.scenario == "burst" else "")),
        ("lost", f"{s.lost}", "enqueued but not succeeded at the end"),
        ("interrupted", f"{s.interrupted}",
         "a run started without its end, or a lease expired (scale-down, rollout, crash)"),
        ("enqueue → start p50 / p95", f"{_ms(s.enqueue_to_start_p50_ms)} / "
         f"{_ms(s.enqueue_to_start_p95_ms)}", "job's enqueue time to its first run's start"),
        ("max replicas", f"{s.max_replicas}", "worker pods seen at once"),
        ("replica-seconds", f"{s.replica_seconds:.0f}", "worker pods x seconds, sampled 1/s"),
        ("last job → zero", "-" if s.last_job_to_zero_s is None else f"{s.last_job_to_zero_s} s",
         "last job's finish to no worker pod left"),
        ("throughput", f"{s.jobs_per_second} jobs/s", f"first enqueue to last finish: "
         f"{s.duration_s} s"),
    ]
    if s.scenario == "drain":
        rows.insert(5, ("finished while draining", f"{s.finished_while_draining}",
                        "runs that ended after their pod got SIGTERM"))
        rows.insert(6, ("pods drained while busy", f"{s.extra.get('pods_drained_while_busy', 0)}",
                        "heartbeats: draining with jobs in flight"))
    for row in rows:
        table.add_row(*row)
    console.print()
    console.print(table)
    for event in s.extra.get("events", []):
        console.print(f"  {event}", markup=False, highlight=False)
    if s.lost_ids:
        console.print(f"[red]lost:[/] {', '.join(s.lost_ids)}")
    if s.interrupted_ids:
        console.print(f"[red]interrupted:[/] {', '.join(s.interrupted_ids)}")
    setup = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    console.print(f"  set-up: {setup}", style="dim", markup=False, highlight=False)
    verdict = ("[bold green]OK[/]: nothing lost, nothing interrupted, scaled back to zero"
               if ok else "[bold red]NOT OK[/]: see the figures above")
    console.print(verdict)
    console.print()
    console.print("[bold]Next:[/]")
    for cmd, what in (
        ('set -a; eval "$(hack/cluster/env)"; set +a',
         "exports KUBECONFIG, KUBECTL (the cluster's kubectl)"),
        (f'"$KUBECTL" get bgq -n {namespace} -o wide', "replicas, desired and the reason"),
        (f'"$KUBECTL" describe bgq {stack.QUEUE} -n {namespace}',
         "conditions and one event per scaling decision"),
        (f'"$KUBECTL" exec -n {namespace} deploy/{stack.RELEASE}-gateway -- '
         f"bgq stats {namespace}/{stack.QUEUE}", "the queue's figures and workers"),
        ("sudo make demo SCENARIO=drain", "long jobs through a scale-down and a rolling update"),
        ("sudo make demo-down", "remove the demo and stop the cluster"),
    ):
        console.print(f"  {cmd:<72} [dim]# {what}[/]", highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["up", "down"], default="up")
    parser.add_argument("--scenario", choices=["burst", "drain"], default="burst")
    parser.add_argument("--short", action="store_true",
                        help="a small burst and quick scale-to-zero (the e2e test)")
    parser.add_argument("--namespace", default="bgq-demo")
    parser.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    parser.add_argument("--summary-json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    if not console.is_terminal:  # logs and pipes: wide lines instead of rich's 80 columns
        console = Console(highlight=False, width=140)

    if args.action == "down":
        try:
            cluster = load_cluster()
            stack.uninstall(console, cluster, args.namespace)
        except ClusterError as exc:
            console.print(f"  cluster not reachable ({exc}); nothing to uninstall")
        return 0

    step = stack.Step(console)
    t0 = time.monotonic()
    try:
        cluster = step("local cluster (hack/cluster/up)", lambda: stack.cluster_up(console))
        images = step("images (hack/cluster/build-image: operator, worker, redis, demo tasks)",
                      lambda: stack.build_images(console))
        step(f"helm upgrade --install {stack.RELEASE} charts/bgq -f examples/demo/values.yaml",
             lambda: stack.install_chart(console, cluster, args.namespace, images))
        console.print(f"[bold cyan]▸[/] run: {args.scenario}"
                      f"{' (short)' if args.short else ''}; set-up took "
                      f"{time.monotonic() - t0:.0f} s")
        summary = run_scenario(console, cluster, args.namespace, images["tasks"],
                               scenario=args.scenario, short=args.short, plain=args.plain)
    except (stack.DemoError, ClusterError, TimeoutError) as exc:
        console.print(f"[bold red]make demo failed:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("\ninterrupted; the demo stays installed (make demo-down removes it)")
        return 130
    print_summary(console, summary, args.namespace, step.timings)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    ok = summary.lost == 0 and summary.interrupted == 0 and summary.scaled_to_zero
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
