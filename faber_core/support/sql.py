"""Migration SQL as PostgreSQL's own parser reads it: statements, whether they can run in a
transaction, and a duration estimate for a preview.

``CREATE INDEX CONCURRENTLY``, ``VACUUM``, ``ALTER SYSTEM`` and their like cannot run inside a
transaction block, nor can a script that manages transactions itself: a handler runs such a
migration statement by statement, and its preview says so.

That parser reads string literals as PostgreSQL does with ``standard_conforming_strings`` on. A
migration session (``context.database.connect(migration_session=True)``) is refused where it is
off; a handler that sends a migration's SQL itself, outside
:func:`~faber_core.support.sessions.run_measured_script` and
:func:`~faber_core.support.sessions.measured_transaction`, which do it, calls
:func:`keep_strings_read_as_faber` before each message, since an earlier migration may have
turned the setting off.
"""

from faber_core.postgres.estimate import estimate_seconds
from faber_core.postgres.sql import is_transactional, keep_strings_read_as_faber, split_statements

__all__ = ["estimate_seconds", "is_transactional", "keep_strings_read_as_faber", "split_statements"]
