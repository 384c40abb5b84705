"""List a queue's jobs by state, paginated, from the queue's own keys (never KEYS/SCAN).

Where each state is indexed (docs/protocol.md, section 1):

* ``queued`` and ``running``: the ready streams ``P:ready:0..2`` hold exactly the undelivered
  and the delivered-but-unsettled entries (acked entries are deleted), so ``XRANGE`` over them
  and the job hashes' ``state`` give both (parked jobs are ``queued``);
* ``scheduled`` and ``retrying``: the delayed set ``P:delayed`` (by due time);
* ``dead``: the dead-letter stream ``P:dead``.

Final ``succeeded``/``cancelled`` jobs are not indexed (only their hashes exist, until the result
TTL): look them up by id. A page examines a bounded number of entries, so a call is cheap even
on a deep queue; the returned cursor continues where it stopped.
"""

from __future__ import annotations

from bgq._async.listing import list_jobs as alist_jobs
from bgq._listing_core import LISTABLE, JobPage, JobSummary
from bgq._sync.listing import list_jobs

__all__ = ["LISTABLE", "JobPage", "JobSummary", "alist_jobs", "list_jobs"]
