"""Longest write stall while a migration waits behind a blocking transaction: faber vs raw psql.

A writer inserts into a table in a loop (a pgbench-style write load) while another session sits
idle in a transaction holding a lock on that table. The same ``ALTER TABLE`` is then run twice in
the same run: by ``faber migrate`` with its defaults for a protected environment (lock_timeout
0.5 s, jittered retry) and by a raw ``psql -f``. The blocking
transaction ends after HOLD_SECONDS both times. Printed: the longest gap between two completed
inserts during each, and their ratio.

    python bench/lock_stall.py            # needs PostgreSQL at 127.0.0.1:5432 (user postgres)

Loopback only; takes about 2 x HOLD_SECONDS plus start-up.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ADMIN_URL = os.environ.get("FABER_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
HOLD_SECONDS = 6.0
MIGRATION = "ALTER TABLE accounts ADD COLUMN note text;\n"


class Writer(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.finished_at: list[float] = []

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                conn.execute("INSERT INTO accounts (balance) VALUES (1)")
                self.finished_at.append(time.monotonic())

    def longest_stall(self, start: float, end: float) -> float:
        times = [start, *[t for t in self.finished_at if start <= t <= end], end]
        return max(b - a for a, b in itertools.pairwise(times))


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def prepare(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS accounts")
        conn.execute("DROP SCHEMA IF EXISTS faber CASCADE")
        conn.execute("DROP TABLE IF EXISTS sqlfiles_migrations")
        conn.execute("CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, balance int)")
        conn.execute("INSERT INTO accounts (balance) SELECT 1 FROM generate_series(1, 10000)")


def with_blocker(url: str, writer: Writer, command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``command`` while a transaction holds a lock on accounts for HOLD_SECONDS; return
    (longest write stall, command duration)."""
    blocker = psycopg.connect(url)
    blocker.execute("SELECT count(*) FROM accounts")
    release = threading.Timer(HOLD_SECONDS, blocker.rollback)
    start = time.monotonic()
    release.start()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    end = time.monotonic()
    release.join()
    blocker.close()
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed: {done.stdout}{done.stderr}")
    time.sleep(0.2)
    return writer.longest_stall(start, end), end - start


def faber_project(directory: Path) -> Path:
    config = {
        "database": {
            "migration_tool": "sqlfiles",
            "environments": {
                "production": {
                    "database_url_env": "BENCH_DATABASE_URL",
                    "backup_before_migrate": False,
                    # lock_timeout and lock_retry: faber's defaults for a protected environment.
                }
            },
        }
    }
    (directory / ".fractary/plugins/faber-db").mkdir(parents=True)
    (directory / ".fractary/plugins/faber-db/config.json").write_text(json.dumps(config))
    (directory / "migrations").mkdir()
    (directory / "migrations/001_note.sql").write_text(MIGRATION)
    return directory


def main() -> None:
    name = f"faber_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(name)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            project = faber_project(Path(scratch))
            prepare(url)
            writer = Writer(url)
            writer.start()
            time.sleep(0.5)
            env = {**os.environ, "BENCH_DATABASE_URL": url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
            faber = [sys.executable, "-m", "faber_core", "migrate", "production", "--yes", "--cwd", str(project)]
            faber_stall, faber_time = with_blocker(url, writer, faber, env)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER TABLE accounts DROP COLUMN note")
            psql_env = {**os.environ, "PGDATABASE": name, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
            psql = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", "-f", str(project / "migrations/001_note.sql")]
            psql_stall, psql_time = with_blocker(url, writer, psql, psql_env)
            writer.stop.set()
            writer.join()
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(f"blocking transaction held for {HOLD_SECONDS:.1f}s; {len(writer.finished_at)} inserts in total")
    print(f"faber migrate: longest write stall {faber_stall * 1000:8.0f} ms (migration took {faber_time:.1f}s)")
    print(f"psql -f:       longest write stall {psql_stall * 1000:8.0f} ms (migration took {psql_time:.1f}s)")
    print(f"ratio psql/faber: {psql_stall / faber_stall:.1f}x")
    print(f"worst write stall with faber's defaults: {faber_stall:.2f}s (target <= 0.6s), migration applied")


if __name__ == "__main__":
    main()
