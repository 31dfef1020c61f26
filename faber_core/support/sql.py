"""Migration SQL as PostgreSQL's own parser reads it: statements, whether they can run in a
transaction, and a duration estimate for a preview.

``CREATE INDEX CONCURRENTLY``, ``VACUUM``, ``ALTER SYSTEM`` and their like cannot run inside a
transaction block, nor can a script that manages transactions itself: a handler runs such a
migration statement by statement, and its preview says so.
"""

from faber_core.postgres.estimate import estimate_seconds
from faber_core.postgres.sql import is_transactional, split_statements

__all__ = ["estimate_seconds", "is_transactional", "split_statements"]
