"""Backup and restore of a ≥ 1 GB database: faber against the raw PostgreSQL tools.

The database is a pgbench database (``pgbench -i -s 70``, about 1 GB), generated once and kept
(``FABER_BENCH_BIG_DB``, default ``faber_bench_1g``): later runs reuse it. Measured, in one run,
each pair alternately ``FABER_BENCH_ROUNDS`` times (default 2; medians printed):

- for each archive format (``FABER_BENCH_FORMATS``, default ``custom,directory``): ``faber
  backup ENV`` with that ``format`` against ``pg_dump`` of the same format (``--format=custom``;
  ``--format=directory --jobs N``) of the same database, each writing to the same disk;
- ``faber rollback ENV --to ID`` with ``restore_mode: swap`` (``pg_restore -j N`` into a new
  database, then the swap) against ``pg_restore -j N`` of that same archive into a fresh database
  (N = the machine's cores, faber's ``jobs`` too), and for the custom format the in-place restore
  (one transaction) against ``pg_restore --single-transaction``. Beside each faber restore: the time of its restore step
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


def write_project(directory: Path, restore_mode: str, archive_format: str) -> None:
    config = {
        "database": {
            "migration_tool": "prisma",
            "environments": {
                ENVIRONMENT: {
                    "database_url_env": "BENCH_DATABASE_URL",
                    "restore_with_app_writes": "allow",
                    "lint": "off",
                    "backup": {
                        "provider": "pg_dump",
                        "format": archive_format,
                        "restore_mode": restore_mode,
                        "jobs": JOBS,
                    },
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


FORMATS = {
    "custom": ("-Fc", ".dump", ["--format=custom"]),
    "directory": (f"-Fd -j{JOBS}", ".dir", ["--format=directory", f"--jobs={JOBS}"]),
}
"""Each archive format measured: how its lines name pg_dump, the suffix of its archives, pg_dump's options."""


def main() -> None:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    formats = os.environ.get("FABER_BENCH_FORMATS", "custom,directory").split(",")
    print(f"machine: {describe_machine()}", flush=True)
    size = ensure_big_database()
    print(f"database {BIG_DB}: {size / 1e9:.2f} GB (pgbench scale {SCALE}); {ROUNDS} rounds", flush=True)
    # A copy per run: faber's rollback replaces what it restores into.
    target = fresh_database(template=BIG_DB)
    scratch = Path(tempfile.mkdtemp(prefix="faber-bench-"))
    restored: list[str] = []
    times: dict[str, list[float]] = {}
    steps: dict[str, list[tuple[str, float]]] = {}
    archive_bytes: dict[str, int] = {}

    def timed(name: str, command: list[str], env: dict[str, str]) -> None:
        times.setdefault(name, []).append(run(command, env))
        print(f"  {name}: {times[name][-1]:.2f}s (load {os.getloadavg()[0]:.2f})", flush=True)

    def alternately(first, second) -> None:
        for round_number in range(ROUNDS):
            # Which goes first alternates: the first of a pair may find the caches colder.
            for measure in (first, second)[:: 1 if round_number % 2 == 0 else -1]:
                measure()

    try:
        project = scratch / "project"
        faber_env = {**os.environ, "BENCH_DATABASE_URL": database_url(target)}
        faber = [sys.executable, "-m", "faber_core"]
        for archive_format in formats:
            flag, suffix, raw_options = FORMATS[archive_format]
            write_project(project, "in-place", archive_format)
            raw_archive = scratch / f"raw{suffix}"

            def raw_backup() -> None:
                shutil.rmtree(raw_archive, ignore_errors=True)
                raw_archive.unlink(missing_ok=True)
                timed(
                    f"pg_dump {flag}",
                    ["pg_dump", *raw_options, "--exclude-schema=faber", f"--file={raw_archive}"],
                    pg_env(target),
                )

            def faber_backup() -> None:
                backup = [*faber, "backup", ENVIRONMENT, "--json", "--cwd", str(project)]
                timed(f"faber backup ({archive_format})", backup, faber_env)
                times.setdefault(f"backup step ({archive_format})", []).append(backup_step_seconds(project) or 0.0)

            alternately(raw_backup, faber_backup)
            manifests = sorted((project / ".faber/backups" / ENVIRONMENT).glob("*.json"))
            record = json.loads(manifests[-1].read_text())
            faber_archive = project / record["location"]
            archive_bytes[archive_format] = record["size_bytes"]
            rollback = [*faber, "rollback", ENVIRONMENT, "--to", record["id"], "--yes", "--json", "--cwd", str(project)]

            def raw_restore() -> None:
                restored.append(fresh_database())
                timed(
                    f"pg_restore -j{JOBS} ({archive_format})",
                    ["pg_restore", f"--jobs={JOBS}", f"--dbname={restored[-1]}", str(faber_archive)],
                    pg_env(restored[-1]),
                )
                drop(restored.pop())

            def faber_restore() -> None:
                write_project(project, "swap", archive_format)
                timed(f"faber rollback (swap, {archive_format})", rollback, faber_env)
                step, steps[archive_format] = restore_steps(project)
                times.setdefault(f"swap restore step ({archive_format})", []).append(step or 0.0)

            alternately(raw_restore, faber_restore)
            if archive_format == "custom":
                restored.append(fresh_database())
                timed(
                    "pg_restore --single-transaction",
                    ["pg_restore", "--single-transaction", f"--dbname={restored[-1]}", str(faber_archive)],
                    pg_env(restored[-1]),
                )
                write_project(project, "in-place", archive_format)
                timed("faber rollback (in place)", rollback, faber_env)
                step, _ = restore_steps(project)
                times.setdefault("in-place restore step", []).append(step or 0.0)
    finally:
        for name in [target, *restored]:
            drop(name)
        shutil.rmtree(scratch, ignore_errors=True)

    def line(name: str, compare: str | None = None, goal: str = "") -> None:
        ratio = f"   faber / {compare} {median(times[name]) / median(times[compare]):.2f} {goal}" if compare else ""
        print(f"  {name:40} {spread(times[name])}{ratio}")

    for archive_format in formats:
        flag = FORMATS[archive_format][0]
        print(f"{archive_format} format: backup (faber's archive {archive_bytes[archive_format] / 1e6:.0f} MB)")
        line(f"pg_dump {flag}")
        line(f"faber backup ({archive_format})", f"pg_dump {flag}", "(goal <= 1.1)")
        line(f"backup step ({archive_format})", f"pg_dump {flag}")
        print(f"{archive_format} format: restore of faber's archive")
        raw = f"pg_restore -j{JOBS} ({archive_format})"
        line(raw)
        line(f"faber rollback (swap, {archive_format})", raw, "(goal <= 1.1)")
        line(f"swap restore step ({archive_format})", raw)
        for name, seconds in steps.get(archive_format, []):
            print(f"      {seconds:6.2f}s  {name}")
        if archive_format == "custom":
            line("pg_restore --single-transaction")
            line("faber rollback (in place)", "pg_restore --single-transaction")
            line("in-place restore step", "pg_restore --single-transaction")
    print(f"machine after: {describe_machine()}")


if __name__ == "__main__":
    main()
