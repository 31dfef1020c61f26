"""The deployment history on MySQL/MariaDB: ``faber_deployments`` in the target database.

It is one of faber's own tables there (``mysqldump.FABER_TABLES``): the mysqldump provider leaves
them out of every backup and a restore keeps them, so a rollback never erases the record of the
deploy it undid.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from faber_core.audit.history import altered_table
from faber_core.vocabulary import RUN_IN_PROGRESS, RUN_UNFINISHED

TABLE = "faber_deployments"
_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id               varchar(64) PRIMARY KEY,
    environment      varchar(255) NOT NULL,
    operation        varchar(64) NOT NULL,
    status           varchar(32) NOT NULL,
    exit_code        int,
    started_at       datetime(6) NOT NULL,
    finished_at      datetime(6),
    duration_seconds double,
    migrations       longtext NOT NULL,
    backup_id        varchar(255),
    rollback_status  varchar(64),
    tool             varchar(255),
    actor            varchar(255),
    faber_version    varchar(64) NOT NULL,
    git_commit       varchar(64),
    error_code       varchar(64),
    error_message    text,
    KEY faber_deployments_environment_started (environment, started_at)
)
"""
_EXISTS = "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
_COLUMNS = "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
_ENDING_REQUIRED = (
    "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
    " AND COLUMN_NAME = 'finished_at' AND IS_NULLABLE = 'NO'"
)
# An older faber's table declares them NOT NULL: a run in progress has none of them yet.
_ENDING_OPTIONAL = (
    f"ALTER TABLE {TABLE} MODIFY exit_code int NULL, MODIFY finished_at datetime(6) NULL,"
    " MODIFY duration_seconds double NULL"
)


def _utc(value: Any) -> Any:
    """A timezone-aware datetime as MySQL's zone-less UTC; anything else as it is."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def record(conn: Any, row: dict[str, Any], *, replacing: bool) -> bool:
    """Write ``row``, ``replacing`` its run's earlier one (the history's docstring says how a row of
    a run in progress ends the others); False, nothing written, for a row of a run in progress that
    an older faber's table cannot take (the user may not alter it)."""
    import pymysql

    conn.execute(_CREATE)
    if conn.execute(_ENDING_REQUIRED, [TABLE]).fetchone():
        try:
            conn.execute(_ENDING_OPTIONAL)
        except pymysql.err.OperationalError:  # no ALTER privilege: rows as runs finish, as then
            if row["status"] == RUN_IN_PROGRESS:
                return False
    if row["status"] == RUN_IN_PROGRESS:
        conn.execute(
            f"UPDATE {TABLE} SET status = %s WHERE status = %s AND id <> %s",
            [RUN_UNFINISHED, RUN_IN_PROGRESS, row["id"]],
        )
    columns = list(row)
    replace = f" ON DUPLICATE KEY UPDATE {', '.join(f'{c} = VALUES({c})' for c in columns if c != 'id')}"
    conn.execute(
        f"INSERT INTO {TABLE} ({', '.join(columns)}) VALUES ({', '.join(f'%({c})s' for c in columns)})"
        + (replace if replacing else ""),
        {column: _utc(value) for column, value in row.items()},
    )
    return True


def forget(conn: Any, run_id: str) -> None:
    conn.execute(f"DELETE FROM {TABLE} WHERE id = %s", [run_id])


def read(conn: Any, environment: str, limit: int, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """The environment's runs, newest first, as JSON values (times in UTC, ISO 8601)."""
    if not conn.execute(_EXISTS, [TABLE]).fetchone():
        return []
    present = conn.execute(_COLUMNS, [TABLE]).fetchall()
    altered = altered_table(f"`{TABLE}`", {name for (name,) in present})
    if altered is not None:
        raise altered
    rows = conn.execute(
        f"SELECT {', '.join(columns)} FROM {TABLE} WHERE environment = %s"
        " ORDER BY started_at DESC, finished_at DESC LIMIT %s",
        [environment, limit],
    ).fetchall()
    runs = []
    for values in rows:
        run = dict(zip(columns, values, strict=True))
        run["migrations"] = json.loads(run["migrations"])
        for key in ("started_at", "finished_at"):
            if run[key] is not None:  # a run in progress has not finished
                run[key] = run[key].replace(tzinfo=dt.timezone.utc).isoformat()
        runs.append(run)
    return runs


def successful_migrations(conn: Any, environment: str) -> list[tuple[str, str, float | None]]:
    """(name, checksum, seconds) of every migration a successful deploy of ``environment`` applied, oldest first."""
    if not conn.execute(_EXISTS, [TABLE]).fetchone():
        return []
    rows = conn.execute(
        f"SELECT migrations FROM {TABLE} WHERE environment = %s AND operation = 'deploy-migrations'"
        " AND status = 'success' ORDER BY started_at",
        [environment],
    ).fetchall()
    return [
        (m["name"], m["checksum"], m.get("duration_seconds"))
        for (text,) in rows
        for m in json.loads(text)
        if m.get("status") == "applied" and m.get("checksum") is not None
    ]
