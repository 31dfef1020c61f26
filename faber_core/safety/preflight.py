"""Before applying: who would the migration wait for?

A metadata-only ``ALTER TABLE`` still needs an ACCESS EXCLUSIVE lock. Waiting for it behind a
session that holds any lock on the table (an idle-in-transaction connection that read a row is
enough) queues every later query on that table behind the ALTER. The preflight finds those
sessions in ``pg_locks``/``pg_stat_activity`` before anything is applied, reports them and acts
by the environment's ``preflight`` policy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import psycopg

from faber_core.errors import PreflightBlocked
from faber_core.safety.models import Blocker, PreflightReport
from faber_core.secrets import Redactor

POLL_SECONDS = 0.5
QUERY_WIDTH = 200
# The literals of another session's statement, each to its end or to the end of the text (the
# server keeps the first kilobyte of a statement, so the last may be cut): '...' with '' inside,
# and a backslash taking the next character as E'...' and MySQL strings do (in a standard string
# it over-reaches, hiding more: the safe side); PostgreSQL's dollar quotes, $tag$...$tag$.
_LITERALS = r"""\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$.*?(?:\$(?P=tag)\$|\Z)|'(?:[^'\\]|''|\\.)*(?:'|\Z)"""
_STRING_LITERAL = re.compile(_LITERALS, re.S)
# MySQL quotes strings with " too (unless ANSI_QUOTES makes them identifiers: hidden all the same).
_MYSQL_STRING_LITERAL = re.compile(_LITERALS + r"""|"(?:[^"\\]|""|\\.)*(?:"|\Z)""", re.S)

_SESSIONS = """
SELECT a.pid,
       extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8,
       a.state,
       a.application_name,
       a.query,
       coalesce(array_agg(DISTINCT l.relation::int) FILTER (WHERE l.relation = ANY(%(oids)s)), '{}'),
       coalesce(array_agg(DISTINCT l.mode) FILTER (WHERE l.relation = ANY(%(oids)s)), '{}'),
       a.xact_start IS NOT NULL AND now() - a.xact_start > make_interval(secs => %(long)s)
FROM pg_stat_activity a
LEFT JOIN pg_locks l ON l.pid = a.pid AND l.granted AND l.locktype = 'relation'
WHERE a.pid <> pg_backend_pid() AND a.datname = current_database() AND a.backend_type = 'client backend'
GROUP BY a.pid, a.xact_start, a.query_start, a.state, a.application_name, a.query
"""


def scrub_query(text: str | None, redactor: Redactor, *, mysql: bool = False) -> str:
    """Another session's statement, without its string literals (they may hold personal data);
    ``mysql``: a MySQL statement, whose double-quoted strings are literals too."""
    literals = _MYSQL_STRING_LITERAL if mysql else _STRING_LITERAL
    scrubbed = literals.sub("'…'", redactor.redact(" ".join((text or "").split())))
    return scrubbed if len(scrubbed) <= QUERY_WIDTH else scrubbed[: QUERY_WIDTH - 1] + "…"


def find_blockers(
    conn: psycopg.Connection,
    tables: dict[int, str],
    *,
    long_transaction_seconds: float,
    concurrent_index_build: bool,
    redactor: Redactor,
) -> list[Blocker]:
    """Sessions holding locks on ``tables`` (oid -> name), and transactions open longer than
    ``long_transaction_seconds``; those last block the migration only when it builds an index
    concurrently (the build waits for every older snapshot)."""
    rows = conn.execute(_SESSIONS, {"oids": list(tables), "long": long_transaction_seconds}).fetchall()
    blockers = []
    for pid, age, state, application, query, oids, modes, long_running in rows:
        locked = [tables[oid] for oid in oids if oid in tables]
        if not locked and not long_running:
            continue
        reason = (
            f"holds {', '.join(sorted(modes))} on {', '.join(locked)}" if locked else f"transaction open for {age:.0f}s"
        )
        blockers.append(
            Blocker(
                pid=pid,
                age_seconds=round(age or 0.0, 1),
                state=state,
                application_name=redactor.redact(application or "") or None,
                query=scrub_query(query, redactor),
                tables=locked,
                lock_modes=sorted(modes),
                reason=reason,
                blocks_migration=bool(locked) or concurrent_index_build,
            )
        )
    return sorted(blockers, key=lambda blocker: -blocker.age_seconds)


def enforce(
    policy: str,
    check: Callable[[], list[Blocker]],
    *,
    wait_seconds: float,
    environment: str,
    tables: list[str],
    release_hint: str,
    on_wait: Callable[[list[Blocker]], None],
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Blocker], float]:
    """Apply ``policy`` to the blockers ``check`` finds; returns the last blockers seen and how
    long it waited. ``abort`` raises at once, ``wait`` after ``wait_seconds``, ``warn`` never.
    ``tables``: what the migrations touch, for the report; ``release_hint``: the engine's statement
    that ends a session, its placeholder (``<pid>``) filled with each blocker's."""
    started = time.monotonic()
    blockers = check()
    if policy == "wait" and _blocking(blockers):
        on_wait(_blocking(blockers))
        while _blocking(blockers) and time.monotonic() - started < wait_seconds:
            sleep(POLL_SECONDS)
            blockers = check()
    waited = round(time.monotonic() - started, 1) if policy == "wait" else 0.0
    if policy in ("abort", "wait") and _blocking(blockers):
        report = PreflightReport(policy=policy, tables=tables, blockers=_blocking(blockers), waited_seconds=waited)
        raise _blocked(report, environment, release_hint)
    return blockers, waited


def _blocking(blockers: list[Blocker]) -> list[Blocker]:
    return [blocker for blocker in blockers if blocker.blocks_migration]


def _blocked(report: PreflightReport, environment: str, release_hint: str) -> PreflightBlocked:
    blockers = report.blockers
    first = blockers[0]
    summary = f"pid {first.pid} ({first.state or 'unknown state'}, {first.age_seconds:.0f}s): {first.reason}"
    more = f" and {len(blockers) - 1} more" if len(blockers) > 1 else ""
    still = f" after waiting {report.waited_seconds:.0f}s" if report.policy == "wait" else ""
    ends = "; ".join(re.sub(r"<[^<>]+>", str(blocker.pid), release_hint) for blocker in blockers)
    return PreflightBlocked(
        f"Sessions would block the migration{still}: {summary}{more}. Nothing was applied",
        result={"preflight": report.model_dump()},
        suggestions=[
            "Let the listed sessions finish (or commit/roll back), then retry",
            f"If a session is stuck, end it: {ends}",
            f'Or set "preflight": "warn" for {environment} to proceed under lock_timeout and retry',
        ],
    )
