"""MySQL/MariaDB preflight: who would the migrations wait for?

An ``ALTER TABLE`` needs an exclusive metadata lock on its table, which waits for every open
transaction that has used the table, and every later query on the table queues behind it. The
sessions holding metadata locks on the tables the migrations name come from MariaDB's
``information_schema.METADATA_LOCK_INFO`` (the ``metadata_lock_info`` plugin) or MySQL's
``performance_schema.metadata_locks``, where the server exposes them; transactions open longer
than ``long_transaction_seconds`` come from ``information_schema.INNODB_TRX`` and the process
list. Where metadata locks are not exposed, a long transaction is reported as one that may block.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pymysql

from faber_core.engines.mysql import split_statements, strip_leading_comments
from faber_core.safety.models import Blocker
from faber_core.safety.preflight import scrub_query
from faber_core.secrets import Redactor

_TABLE = r"`?([A-Za-z0-9_$]+)`?(?:\.`?([A-Za-z0-9_$]+)`?)?"
_NAMED_TABLE = [
    re.compile(rf"^alter\s+(?:online\s+|ignore\s+)*table\s+(?:if\s+exists\s+)?{_TABLE}", re.I),
    re.compile(rf"^create\s+(?:unique\s+|fulltext\s+|spatial\s+)?index\s+\S+\s+on\s+{_TABLE}", re.I),
    re.compile(rf"^drop\s+index\s+\S+\s+on\s+{_TABLE}", re.I),
    re.compile(rf"^(?:drop|truncate)\s+table\s+(?:if\s+exists\s+)?{_TABLE}", re.I),
    re.compile(rf"^rename\s+table\s+{_TABLE}", re.I),
    re.compile(rf"^(?:insert|replace)\s+(?:ignore\s+)?into\s+{_TABLE}", re.I),
    re.compile(rf"^update\s+(?:ignore\s+)?{_TABLE}", re.I),
    re.compile(rf"^delete\s+from\s+{_TABLE}", re.I),
]

_MARIADB_LOCKS = """
SELECT m.THREAD_ID, m.TABLE_NAME, m.LOCK_MODE FROM information_schema.METADATA_LOCK_INFO m
WHERE m.TABLE_SCHEMA = DATABASE() AND m.THREAD_ID <> CONNECTION_ID() AND m.TABLE_NAME IN %s
"""
_MYSQL_LOCKS = """
SELECT t.PROCESSLIST_ID, m.OBJECT_NAME, m.LOCK_TYPE FROM performance_schema.metadata_locks m
JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID
WHERE m.OBJECT_TYPE = 'TABLE' AND m.OBJECT_SCHEMA = DATABASE() AND m.LOCK_STATUS = 'GRANTED'
  AND t.PROCESSLIST_ID <> CONNECTION_ID() AND m.OBJECT_NAME IN %s
"""
_SESSIONS = """
SELECT p.ID, p.USER, p.COMMAND, p.STATE, p.INFO, TIMESTAMPDIFF(SECOND, t.trx_started, NOW())
FROM information_schema.PROCESSLIST p
LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID
WHERE p.ID <> CONNECTION_ID()
"""
_SESSIONS_WITHOUT_TRANSACTIONS = """
SELECT p.ID, p.USER, p.COMMAND, p.STATE, p.INFO, NULL
FROM information_schema.PROCESSLIST p
WHERE p.ID <> CONNECTION_ID()
"""
NEEDS_PRIVILEGE = 1227
"""ER_SPECIFIC_ACCESS_DENIED_ERROR: ``INNODB_TRX`` needs the ``PROCESS`` privilege."""


def touched_tables(sources: Iterable[str], database: str | None) -> list[str]:
    """The tables of ``database`` the statements of ``sources`` name, in order of appearance."""
    found: dict[str, None] = {}
    for sql in sources:
        for statement in split_statements(sql):
            text = strip_leading_comments(statement)
            for pattern in _NAMED_TABLE:
                match = pattern.match(text)
                if match:
                    schema, table = (match[1], match[2]) if match[2] else (database, match[1])
                    if schema == database:
                        found[table] = None
                    break
    return list(found)


def _metadata_locks(conn: Any, tables: list[str]) -> list[tuple[int, str, str]] | None:
    """(session id, table, lock mode) held on ``tables``; None where the server exposes none."""
    if not tables:
        return []
    for query in (_MARIADB_LOCKS, _MYSQL_LOCKS):
        try:
            return [tuple(row) for row in conn.execute(query, [tuple(tables)]).fetchall()]
        except pymysql.Error:
            continue
    return None


def find_blockers(
    conn: Any, tables: list[str], *, long_transaction_seconds: float, redactor: Redactor
) -> list[Blocker]:
    """Sessions holding metadata locks on ``tables``, and transactions open longer than
    ``long_transaction_seconds`` (blocking only when metadata locks cannot be read)."""
    locks = _metadata_locks(conn, tables)
    held: dict[int, list[tuple[str, str]]] = {}
    for session, table, mode in locks or []:
        held.setdefault(int(session), []).append((table, mode))
    blockers = []
    try:
        sessions = conn.execute(_SESSIONS).fetchall()
    except pymysql.Error as exc:
        if not exc.args or exc.args[0] != NEEDS_PRIVILEGE:
            raise
        # Without PROCESS the user sees neither transactions nor other users' sessions: what it sees
        # is reported, the deploy is not refused for it (docs/mysql.md, Preflight).
        sessions = conn.execute(_SESSIONS_WITHOUT_TRANSACTIONS).fetchall()
    for session, user, command, state, info, age in sessions:
        on = held.get(int(session), [])
        long_running = age is not None and age > long_transaction_seconds
        if not on and not long_running:
            continue
        if on:
            reason = f"holds {', '.join(sorted({m for _, m in on}))} on {', '.join(sorted({t for t, _ in on}))}"
        elif locks is None:
            reason = (
                f"transaction open for {age}s; the server does not expose metadata locks, so it may hold one on a "
                "table the migrations alter"
            )
        else:
            reason = f"transaction open for {age}s"
        blockers.append(
            Blocker(
                pid=int(session),
                age_seconds=float(age or 0),
                state=" ".join(part for part in (command, state) if part) or None,
                application_name=redactor.redact(user or "") or None,
                query=scrub_query(info, redactor, mysql=True),
                tables=sorted({t for t, _ in on}),
                lock_modes=sorted({m for _, m in on}),
                reason=reason,
                blocks_migration=bool(on),
            )
        )
    return blockers
