"""Backup and restore of a ≥ 1 GB database: faber against the raw PostgreSQL tools.

The database is a pgbench database (``pgbench -i -s 70``, about 1 GB), generated once and kept
(``FABER_BENCH_BIG_DB``, default ``faber_bench_1g``): later runs reuse it. Measured, in one run,
each pair alternately ``FABER_BENCH_ROUNDS`` times (default 2; medians printed):

- ``faber backup ENV`` against ``pg_dump --format=custom`` of the same database (faber's archive
  format), each writing to the same disk; for reference ``pg_dump --format=directory -j N``;
- ``faber rollback ENV --to ID`` with ``restore_mode: swap`` (``pg_restore -j N`` into a new
  database, then the swap) against ``pg_restore -j N`` of that same archive into a fresh database
  (N = the machine's cores), and the in-place restore (one transaction) against
  ``pg_restore --single-transaction``. Beside each faber restore: the time of its restore step
  (``rollback.started`` to ``rollback.finished`` in the audit log; the command's wall time also
  includes start-up, the lock and the writes-since-the-backup check) and, for the swap, of each
  of its steps.

    python bench/backup_restore.py      # needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust)

Takes a few minutes. The machine's load is printed with the numbers: on a shared machine they move.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from machine import describe as describe_machine  # bench/machine.py, beside this script

ADMIN_URL = os.environ.get("FABER_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BIG_DB = os.environ.get("FABER_BENCH_BIG_DB", "faber_bench_1g")
SCALE = 70
ENVIRONMENT = "bench"
JOBS = os.cpu_count() or 1
ROUNDS = int(os.environ.get("FABER_BENCH_ROUNDS", "2"))


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def pg_env(database: str) -> dict[str, str]:
    url = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    return {
        **os.environ,
        "PGHOST": str(url.get("host", "127.0.0.1")),
        "PGPORT": str(url.get("port", 5432)),
        "PGUSER": str(url.get("user", "postgres")),
        "PGDATABASE": database,
    }


def admin(statement: sql.Composable) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def ensure_big_database() -> int:
    """The pgbench database, created on the first run; returns its size in bytes."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BIG_DB]).fetchone()
    if not exists:
        print(f"generating {BIG_DB} (pgbench -i -s {SCALE}), once", flush=True)
        admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BIG_DB)))
        run(["pgbench", "-i", "-q", "-s", str(SCALE)], pg_env(BIG_DB))
    with psycopg.connect(database_url(BIG_DB)) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def run(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        shown = " ".join(map(str, command[:5]))
        sys.exit(f"{shown} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def fresh_database(template: str | None = None) -> str:
    name = f"faber_bench_{uuid.uuid4().hex[:8]}"
    clone = sql.SQL(" TEMPLATE {}").format(sql.Identifier(template)) if template else sql.SQL("")
    admin(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), clone))
    return name


def drop(name: str) -> None:
    admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def write_project(directory: Path, restore_mode: str) -> None:
    config = {
        "database": {
            "migration_tool": "prisma",
            "environments": {
                ENVIRONMENT: {
                    "database_url_env": "BENCH_DATABASE_URL",
                    "restore_with_app_writes": "allow",
                    "lint": "off",
                    "backup": {"provider": "pg_dump", "restore_mode": restore_mode, "jobs": JOBS},
                }
            },
        }
    }
    (directory / ".fractary/plugins/faber-db").mkdir(parents=True, exist_ok=True)
    (directory / ".fractary/plugins/faber-db/config.json").write_text(json.dumps(config))
    (directory / "prisma/migrations").mkdir(parents=True, exist_ok=True)


def backup_step_seconds(project: Path) -> float | None:
    """backup.started to backup.created of the last backup in the project's audit log: the
    dump and its sealing, without faber's start-up and the reads before it."""
    started = created = None
    for line in (project / ".faber/audit.log").read_text().splitlines():
        event = json.loads(line)
        if event.get("kind") == "backup.started":
            started, created = dt.datetime.fromisoformat(event["timestamp"]), None
        elif event.get("kind") == "backup.created":
            created = dt.datetime.fromisoformat(event["timestamp"])
    return (created - started).total_seconds() if started and created else None


def restore_steps(project: Path) -> tuple[float | None, list[tuple[str, float]]]:
    """The last rollback in the project's audit log: rollback.started to rollback.finished, and
    the provider's steps (backup.restore_step) with the seconds since the step before."""
    started = finished = None
    steps: list[tuple[str, float]] = []
    for line in (project / ".faber/audit.log").read_text().splitlines():
        event = json.loads(line)
        when = dt.datetime.fromisoformat(event["timestamp"])
        if event.get("kind") == "rollback.started":
            started, finished, steps, last = when, None, [], when
        elif event.get("kind") == "backup.restore_step" and started:
            steps.append((event["data"]["step"], (when - last).total_seconds()))
            last = when
        elif event.get("kind") == "rollback.finished":
            finished = when
    return ((finished - started).total_seconds() if started and finished else None), steps


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{median(values):7.2f}s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    print(f"machine: {describe_machine()}", flush=True)
    size = ensure_big_database()
    print(f"database {BIG_DB}: {size / 1e9:.2f} GB (pgbench scale {SCALE}); {ROUNDS} rounds", flush=True)
    # A copy per run: faber's rollback replaces what it restores into.
    target = fresh_database(template=BIG_DB)
    scratch = Path(tempfile.mkdtemp(prefix="faber-bench-"))
    restored: list[str] = []
    times: dict[str, list[float]] = {}
    steps: dict[str, list[tuple[str, float]]] = {}

    def timed(name: str, command: list[str], env: dict[str, str]) -> None:
        times.setdefault(name, []).append(run(command, env))

    try:
        project = scratch / "project"
        write_project(project, "in-place")
        faber_env = {**os.environ, "BENCH_DATABASE_URL": database_url(target)}
        faber = [sys.executable, "-m", "faber_core"]
        raw_archive = scratch / "raw.dump"

        def raw_backup() -> None:
            timed(
                "pg_dump -Fc",
                ["pg_dump", "--format=custom", "--exclude-schema=faber", f"--file={raw_archive}"],
                pg_env(target),
            )

        def faber_backup() -> None:
            timed("faber backup", [*faber, "backup", ENVIRONMENT, "--json", "--cwd", str(project)], faber_env)
            times.setdefault("backup step", []).append(backup_step_seconds(project) or 0.0)

        for round_number in range(ROUNDS):
            # Which goes first alternates: the first of a pair may find the caches colder.
            for measure in (raw_backup, faber_backup)[:: 1 if round_number % 2 == 0 else -1]:
                measure()
        shutil.rmtree(scratch / "dir", ignore_errors=True)
        timed(
            f"pg_dump -Fd -j{JOBS}",
            ["pg_dump", "--format=directory", f"--jobs={JOBS}", "--exclude-schema=faber", f"--file={scratch / 'dir'}"],
            pg_env(target),
        )
        archives = sorted((project / ".faber/backups" / ENVIRONMENT).glob("*.dump"))
        faber_archive = archives[-1]
        backup_id = faber_archive.name.removesuffix(".dump")
        archive_bytes = faber_archive.stat().st_size
        rollback = [*faber, "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json", "--cwd", str(project)]

        def raw_restore() -> None:
            restored.append(fresh_database())
            timed(
                f"pg_restore -j{JOBS}",
                ["pg_restore", f"--jobs={JOBS}", f"--dbname={restored[-1]}", str(faber_archive)],
                pg_env(restored[-1]),
            )
            drop(restored.pop())

        def faber_restore() -> None:
            write_project(project, "swap")
            timed("faber rollback (swap)", rollback, faber_env)
            step, steps["swap"] = restore_steps(project)
            times.setdefault("swap restore step", []).append(step or 0.0)

        for round_number in range(ROUNDS):
            for measure in (raw_restore, faber_restore)[:: 1 if round_number % 2 == 0 else -1]:
                measure()
        restored.append(fresh_database())
        timed(
            "pg_restore --single-transaction",
            ["pg_restore", "--single-transaction", f"--dbname={restored[-1]}", str(faber_archive)],
            pg_env(restored[-1]),
        )
        write_project(project, "in-place")
        timed("faber rollback (in place)", rollback, faber_env)
        step, _ = restore_steps(project)
        times.setdefault("in-place restore step", []).append(step or 0.0)
    finally:
        for name in [target, *restored]:
            drop(name)
        shutil.rmtree(scratch, ignore_errors=True)

    def line(name: str, compare: str | None = None, goal: str = "") -> None:
        ratio = f"   faber / {compare} {median(times[name]) / median(times[compare]):.2f} {goal}" if compare else ""
        print(f"  {name:34} {spread(times[name])}{ratio}")

    print(f"backup (archive {archive_bytes / 1e6:.0f} MB)")
    line("pg_dump -Fc")
    line("faber backup", "pg_dump -Fc", "(goal <= 1.1)")
    line("backup step", "pg_dump -Fc")
    line(f"pg_dump -Fd -j{JOBS}")
    print("restore of the same archive")
    line(f"pg_restore -j{JOBS}")
    line("faber rollback (swap)", f"pg_restore -j{JOBS}", "(goal <= 1.1)")
    line("swap restore step", f"pg_restore -j{JOBS}")
    for name, seconds in steps.get("swap", []):
        print(f"      {seconds:6.2f}s  {name}")
    line("pg_restore --single-transaction")
    line("faber rollback (in place)", "pg_restore --single-transaction")
    line("in-place restore step", "pg_restore --single-transaction")
    print(f"machine after: {describe_machine()}")


if __name__ == "__main__":
    main()
