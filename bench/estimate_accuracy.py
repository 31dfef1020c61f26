"""Estimated vs measured duration of migrations on tables of 1e4 to 1e6 rows.

For each table size, a fresh table is filled and analysed; each migration is estimated from the
statistics (faber_core.safety.estimate, uncalibrated), then run and timed, as a deploy would run it
(committed). The whole round is made REPEATS times on freshly filled tables and each migration's
median time taken: on a shared machine one run can be several times slower than the next. Prints
every pair and the median relative error |estimated - measured| / measured.

    python bench/estimate_accuracy.py          # needs PostgreSQL at 127.0.0.1:5432 (user postgres)

Loopback only; about two minutes, most of it the 1e6-row table.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

import psycopg
from psycopg import sql

from faber_core.engines.postgres import POSTGRESQL
from faber_core.safety.catalog import Catalog
from faber_core.safety.estimate import Estimator

ADMIN_URL = os.environ.get("FABER_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SIZES = (10_000, 100_000, 1_000_000)
REPEATS = 3
"""Rounds of the whole measurement; each migration's median counts."""
MIGRATIONS = {
    "add nullable column": "ALTER TABLE t ADD COLUMN note text",
    "set not null (scan)": "ALTER TABLE t ALTER COLUMN amount SET NOT NULL",
    "check constraint (scan)": "ALTER TABLE t ADD CONSTRAINT t_amount CHECK (amount >= 0)",
    "index on integer": "CREATE INDEX t_amount_idx ON t (amount)",
    "index on text": "CREATE INDEX t_label_idx ON t (label)",
    "type change (rewrite)": "ALTER TABLE t ALTER COLUMN amount TYPE bigint",
}


def fill(conn: psycopg.Connection, rows: int) -> None:
    conn.execute("DROP TABLE IF EXISTS t")
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, amount integer, label text)")
    conn.execute("INSERT INTO t SELECT g, g %% 1000, md5(g::text) FROM generate_series(1, %s) g", [rows])
    conn.execute("VACUUM ANALYZE t")


def measure(conn: psycopg.Connection, statement: str) -> tuple[float, float]:
    estimated = Estimator(Catalog(conn, "public", POSTGRESQL)).estimate(statement).seconds
    started = time.monotonic()
    conn.execute(statement)
    return estimated, time.monotonic() - started


def main() -> None:
    name = f"faber_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    errors = []
    try:
        with psycopg.connect(ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", autocommit=True) as conn:
            runs: dict[tuple[int, str], list[tuple[float, float]]] = {}
            for _ in range(REPEATS):
                for rows in SIZES:
                    fill(conn, rows)
                    for label, statement in MIGRATIONS.items():
                        runs.setdefault((rows, label), []).append(measure(conn, statement))
            print(f"{'rows':>9}  {'migration':<26} {'estimated':>10} {'measured':>10} {'error':>7}")
            for (rows, label), pairs in runs.items():
                estimated = statistics.median(e for e, _ in pairs)
                measured = statistics.median(m for _, m in pairs)
                error = abs(estimated - measured) / measured
                errors.append(error)
                print(f"{rows:>9}  {label:<26} {estimated:>9.3f}s {measured:>9.3f}s {error:>6.0%}")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(f"median relative error: {statistics.median(errors):.0%} over {len(errors)} migrations")


if __name__ == "__main__":
    main()
