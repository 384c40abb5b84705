"""Blocking I/O drivers GENERATED from ``bgq._async`` by ``hack/gen-sync-client``: do not edit."""
