"""The session that applies migrations: a tool's own advisory lock, reads that say who blocks
them, and the rows each migration wrote.

Open it with ``context.database.connect(migration_session=True)`` and give it the environment's
``lock_timeout``/``statement_timeout`` with ``context.apply_session_timeouts(conn)`` (a
subprocess gets the same through ``PGOPTIONS``: ``context.session_timeout_env()``). Run each
migration's transaction in :func:`measured_transaction` (a script that manages its own
transactions: :func:`run_measured_script`), so that a restore can tell the rows faber's
migrations wrote from the application's. Both set the session's timeouts again for each migration
(an earlier one may have run ``RESET ALL``); send :func:`session_timeouts_again` yourself before a
migration that runs outside a transaction.
"""

from faber_core.backup.writes import Measurement, measured_transaction, run_measured_script
from faber_core.postgres.locks import advisory_lock, blocked_read_error
from faber_core.safety.timeouts import session_timeouts_again

__all__ = [
    "Measurement",
    "advisory_lock",
    "blocked_read_error",
    "measured_transaction",
    "run_measured_script",
    "session_timeouts_again",
]
