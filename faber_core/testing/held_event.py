"""An audit sink a test uses to hold a run just after an event, so that a signal the test sends once
it sees the event in the audit log lands while faber is still at that moment (not a few
milliseconds on, wherever the run has got to by then).

Load it into a ``faber`` process with ``FABER_PLUGINS=faber_core.testing.held_event`` and name the
event in :data:`EVENT_ENV` (``rollback.finished``, say) and, optionally, the seconds to hold in
:data:`SECONDS_ENV`. It is called after every other sink (``trylast``), so the built-in audit log
already has the event when it starts holding. A signal interrupts the hold as it would the sink
that was running when it landed; a run that is to go on once the test has acted (a signal faber
drops, a lock the test took) is let go by creating the file :data:`RELEASE_ENV` names
(:meth:`faber_core.testing.faults.FaberProcess.release`), which ends this hold and every later one.
"""

from __future__ import annotations

import os
import time

from faber_core import hookimpl
from faber_core.models import AuditEvent

EVENT_ENV = "FAULTS_HOLD_AFTER_EVENT"
"""The kind of the event after which the run holds (each time it is emitted)."""
SECONDS_ENV = "FAULTS_HOLD_SECONDS"
"""How long to hold, in seconds (default :data:`DEFAULT_SECONDS`)."""
DEFAULT_SECONDS = 3.0
RELEASE_ENV = "FAULTS_HOLD_RELEASE_FILE"
"""A file whose existence ends the hold at once."""
_POLL_SECONDS = 0.01


@hookimpl(trylast=True)
def faber_audit_event(event: AuditEvent) -> None:
    if event.kind != os.environ.get(EVENT_ENV):
        return
    release = os.environ.get(RELEASE_ENV)
    deadline = time.monotonic() + float(os.environ.get(SECONDS_ENV) or DEFAULT_SECONDS)
    while time.monotonic() < deadline and not (release and os.path.exists(release)):
        time.sleep(_POLL_SECONDS)
