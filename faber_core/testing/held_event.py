"""An audit sink a test uses to hold a run just after an event, so that a signal the test sends once
it sees the event in the audit log lands while faber is still at that moment (not a few
milliseconds on, wherever the run has got to by then).

Load it into a ``faber`` process with ``FABER_PLUGINS=faber_core.testing.held_event`` and name the
event in :data:`EVENT_ENV` (``rollback.finished``, say) and, optionally, the seconds to hold in
:data:`SECONDS_ENV`. It is called after every other sink (``trylast``), so the built-in audit log
already has the event when it starts holding. A signal interrupts the hold as it would the sink
that was running when it landed.
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


@hookimpl(trylast=True)
def faber_audit_event(event: AuditEvent) -> None:
    if event.kind != os.environ.get(EVENT_ENV):
        return
    time.sleep(float(os.environ.get(SECONDS_ENV) or DEFAULT_SECONDS))
