"""Waiting for AWS to finish: a snapshot to become available, a restored instance to come up.

botocore's waiters cannot report progress while they poll, so faber polls the status itself at
``poll_interval_seconds`` and tells the user each change. Throttled describe calls are retried
by botocore's retry mode inside each poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from faber_core.context import RunContext

from faber_rds_backup.targets import FAILED_STATES


class WaitTimedOut(Exception):
    def __init__(self, what: str, last_status: str, waited_seconds: float) -> None:
        super().__init__(f"{what} was still {last_status!r} after {waited_seconds:.0f}s")
        self.what = what
        self.last_status = last_status


class WaitFailed(Exception):
    def __init__(self, what: str, status: str) -> None:
        super().__init__(f"{what} went to status {status!r} and will not become available")
        self.what = what
        self.status = status


def wait_until_available(
    context: RunContext,
    what: str,
    read_status: Callable[[], tuple[str, int | None]],
    *,
    timeout_seconds: float,
    poll_interval_seconds: float,
    event: str,
) -> None:
    """Poll ``read_status`` (status, percent done) until ``available``; emit ``event`` on each change."""
    started = time.monotonic()
    last: tuple[str, int | None] | None = None
    while True:
        status, percent = read_status()
        if (status, percent) != last:
            context.emit(
                event,
                target=what,
                status=status,
                percent_progress=percent,
                elapsed_seconds=round(time.monotonic() - started, 1),
            )
            last = (status, percent)
        if status == "available":
            return
        if status in FAILED_STATES:
            raise WaitFailed(what, status)
        waited = time.monotonic() - started
        if waited + poll_interval_seconds > timeout_seconds:
            raise WaitTimedOut(what, status, waited)
        time.sleep(poll_interval_seconds)
