"""The bookkeeping table, ``plainsql_history``: one row per migration, applied or failed."""

from __future__ import annotations

import psycopg

from faber_core.models import MigrationRecord

TABLE = "plainsql_history"
CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    state text NOT NULL CHECK (state IN ('applied', 'failed')),
    installed_at timestamptz NOT NULL DEFAULT now(),
    error text
)
"""
RECORD_APPLIED = f"""
INSERT INTO {TABLE} (name, checksum, state) VALUES (%s, %s, 'applied')
ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, state = 'applied', installed_at = now(), error = NULL
"""
RECORD_FAILED = f"""
INSERT INTO {TABLE} (name, checksum, state, error) VALUES (%s, %s, 'failed', %s)
ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, state = 'failed', error = excluded.error
"""


def read_records(conn: psycopg.Connection) -> list[MigrationRecord]:
    """The rows, oldest first; none while the table does not exist (nothing applied yet)."""
    if conn.execute("SELECT to_regclass(%s)", [TABLE]).fetchone()[0] is None:
        return []
    rows = conn.execute(f"SELECT name, checksum, state, installed_at FROM {TABLE} ORDER BY installed_at, name")
    return [
        MigrationRecord(name=name, checksum=checksum, state=state, finished_at=installed_at)
        for name, checksum, state, installed_at in rows
    ]
