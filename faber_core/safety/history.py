"""The one place the safety checks read faber's deployment history (``faber_deployments``,
written by :mod:`faber_core.audit.history`): the migrations successful deploys applied."""

from __future__ import annotations

import psycopg
from psycopg import sql

HISTORY_TABLE = "faber_deployments"


def applied_by_successful_deploys(
    conn: psycopg.Connection, schema: str, environment: str
) -> list[tuple[str, str, float | None]]:
    """(name, checksum, duration in seconds) of every migration a successful deploy of
    ``environment`` applied, oldest first; empty when nothing was recorded yet."""
    exists = conn.execute("SELECT to_regclass(%s)", [sql.Identifier(schema, HISTORY_TABLE).as_string(conn)])
    if exists.fetchone()[0] is None:
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT m->>'name', m->>'checksum', (m->>'duration_seconds')::float8"
            " FROM {} d, jsonb_array_elements(d.migrations) m"
            " WHERE d.environment = %s AND d.operation = 'deploy-migrations' AND d.status = 'success'"
            " AND m->>'status' = 'applied' AND m->>'checksum' IS NOT NULL ORDER BY d.started_at"
        ).format(sql.Identifier(schema, HISTORY_TABLE)),
        [environment],
    ).fetchall()
    return [(name, checksum, duration) for name, checksum, duration in rows]
