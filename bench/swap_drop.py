"""Where the swap restore's last step, ``DROP DATABASE`` of the previous database, spends its time.

On PostgreSQL 15 ``DROP DATABASE`` requests an immediate checkpoint and waits for it. Right after
``pg_restore -j N`` has written a database, that checkpoint writes and fsyncs what the restore
left dirty. Three ways, each on a fresh pair (a copy of the pgbench database standing for the
previous database, and a restore of its archive standing for the restored one):

- ``drop``: ``DROP DATABASE previous`` right after the restore (what faber does);
- ``checkpoint, then drop``: an explicit ``CHECKPOINT`` first, each timed: what is left of the
  drop without the restore's writes to flush;
- ``relations first``: ``DROP SCHEMA … CASCADE`` of every schema in the previous database, then
  ``DROP DATABASE``.

Each way ``FABER_BENCH_ROUNDS`` times (default 2), the order reversed every other round.
Printed with ``pg_stat_bgwriter``'s counters for each drop (buffers the checkpoints wrote, their
write and sync time) and the load. Uses the database of ``backup_restore.py``
(``FABER_BENCH_BIG_DB``, generated the same way if missing).

    python bench/swap_drop.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
from backup_restore import (
    ADMIN_URL,
    BIG_DB,
    JOBS,
    ROUNDS,
    database_url,
    drop,
    ensure_big_database,
    fresh_database,
    pg_env,
    run,
)
from machine import describe as describe_machine  # bench/machine.py, beside this script
from psycopg import sql

COUNTERS = "SELECT buffers_checkpoint, checkpoint_write_time, checkpoint_sync_time FROM pg_stat_bgwriter"


def timed_statement(statement: sql.Composable, url: str = ADMIN_URL) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(statement)
        return time.perf_counter() - started


def counters() -> tuple[int, float, float]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        return conn.execute(COUNTERS).fetchone()


def main() -> None:
    print(f"machine: {describe_machine()}", flush=True)
    size = ensure_big_database()
    print(f"database {BIG_DB}: {size / 1e9:.2f} GB", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="faber-bench-drop-"))
    archive = scratch / "archive.dir"
    made: list[str] = []
    try:
        run(["pg_dump", "--format=directory", f"--jobs={JOBS}", f"--file={archive}"], pg_env(BIG_DB))
        ways = ["drop", "checkpoint, then drop", "relations first"]
        for way in [way for round_number in range(ROUNDS) for way in ways[:: 1 if round_number % 2 == 0 else -1]]:
            previous = fresh_database(template=BIG_DB)
            made.append(previous)
            timed_statement(sql.SQL("CHECKPOINT"))  # both start from a clean server
            restored = fresh_database()
            made.append(restored)
            restore = run(["pg_restore", f"--jobs={JOBS}", f"--dbname={restored}", str(archive)], pg_env(restored))
            before = counters()
            parts = []
            if way == "checkpoint, then drop":
                parts.append(("CHECKPOINT", timed_statement(sql.SQL("CHECKPOINT"))))
            elif way == "relations first":
                with psycopg.connect(database_url(previous), autocommit=True) as conn:
                    schemas = conn.execute(
                        "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema')"
                        " AND nspname NOT LIKE 'pg\\_%'"
                    ).fetchall()
                drop_schemas = sql.SQL("DROP SCHEMA {} CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier(name) for (name,) in schemas)
                )
                parts.append(("DROP SCHEMA … CASCADE", timed_statement(drop_schemas, database_url(previous))))
            drop_database = sql.SQL("DROP DATABASE {}").format(sql.Identifier(previous))
            parts.append(("DROP DATABASE", timed_statement(drop_database)))
            made.remove(previous)
            after = counters()
            steps = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in parts)
            print(
                f"{way:22} pg_restore -j{JOBS} {restore:6.2f}s; {steps}; total {sum(s for _, s in parts):.2f}s; "
                f"checkpoints wrote {after[0] - before[0]} buffers, write {(after[1] - before[1]) / 1000:.2f}s, "
                f"sync {(after[2] - before[2]) / 1000:.2f}s (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            drop(restored)
            made.remove(restored)
    finally:
        for name in made:
            drop(name)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"machine after: {describe_machine()}")


if __name__ == "__main__":
    main()
