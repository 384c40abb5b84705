"""asyncio I/O drivers; ``hack/gen-sync-client`` turns them into the blocking ``bgq._sync``."""
