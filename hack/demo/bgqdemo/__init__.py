"""`make demo`: bgq doing its job on the local cluster, measured (docs/getting-started.md).

Modules: ``precheck`` (what the machine lacks, before anything is built), ``stack`` (cluster,
images, chart, queue), ``run`` (the burst and the drain scenarios), ``watch`` (sampling the
queue and its workers; the live terminal view), ``summary`` (the figures, computed from what
was sampled and what the tasks recorded). Entry point: ``python -m bgqdemo``.
"""
