"""Backup and restore of a ≥ 1 GB database: faber against the raw PostgreSQL tools.

The database is a pgbench database (``pgbench -i -s 70``, about 1 GB), generated once and kept
(``FABER_BENCH_BIG_DB``, default ``faber_bench_1g``): later runs reuse it. Measured, in one run:

- ``faber backup ENV`` against ``pg_dump --format=custom`` of the same database (faber's archive
  format), each writing to the same disk;
- ``faber rollback ENV --to ID`` against ``pg_restore`` of that same archive into a fresh
  database: single-job in one transaction (``--single-transaction``: the guarantee faber gives),
  and ``-j N`` (N = the machine's cores), which is faster but not atomic; the time faber's restore
  step itself takes (``rollback.started`` to ``rollback.finished`` in its audit log) is printed
  beside the command's wall time, which includes the writes-since-the-backup check;
- for reference, ``pg_dump --format=directory -j N``.

    python bench/backup_restore.py      # needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust)

Takes a few minutes. The machine's load is printed with the numbers: on a shared machine they move.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
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


def write_project(directory: Path) -> None:
    config = {
        "database": {
            "migration_tool": "prisma",
            "environments": {
                ENVIRONMENT: {
                    "database_url_env": "BENCH_DATABASE_URL",
                    "restore_with_app_writes": "allow",
                    "lint": "off",
                }
            },
        }
    }
    (directory / ".fractary/plugins/faber-db").mkdir(parents=True)
    (directory / ".fractary/plugins/faber-db/config.json").write_text(json.dumps(config))
    (directory / "prisma/migrations").mkdir(parents=True)


def restore_step_seconds(project: Path) -> float | None:
    """rollback.started to rollback.finished of the last rollback in the project's audit log."""
    started = finished = None
    for line in (project / ".faber/audit.log").read_text().splitlines():
        event = json.loads(line)
        if event.get("kind") == "rollback.started":
            started, finished = dt.datetime.fromisoformat(event["timestamp"]), None
        elif event.get("kind") == "rollback.finished":
            finished = dt.datetime.fromisoformat(event["timestamp"])
    return (finished - started).total_seconds() if started and finished else None


def main() -> None:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    print(f"machine: {describe_machine()}", flush=True)
    size = ensure_big_database()
    print(f"database {BIG_DB}: {size / 1e9:.2f} GB (pgbench scale {SCALE})", flush=True)
    # A copy per run: faber's rollback replaces what it restores into.
    target = fresh_database(template=BIG_DB)
    scratch = Path(tempfile.mkdtemp(prefix="faber-bench-"))
    restored: list[str] = []
    try:
        project = scratch / "project"
        project.mkdir()
        write_project(project)
        faber_env = {**os.environ, "BENCH_DATABASE_URL": database_url(target)}
        faber = [sys.executable, "-m", "faber_core"]

        raw_archive = scratch / "raw.dump"
        raw_dump = run(
            ["pg_dump", "--format=custom", "--exclude-schema=faber", f"--file={raw_archive}"], pg_env(target)
        )
        faber_backup = run([*faber, "backup", ENVIRONMENT, "--json", "--cwd", str(project)], faber_env)
        directory_dump = run(
            ["pg_dump", "--format=directory", f"--jobs={JOBS}", "--exclude-schema=faber", f"--file={scratch / 'dir'}"],
            pg_env(target),
        )
        archives = sorted((project / ".faber/backups" / ENVIRONMENT).glob("*.dump"))
        faber_archive = archives[-1]
        backup_id = faber_archive.name.removesuffix(".dump")
        archive_bytes = faber_archive.stat().st_size

        restored.append(fresh_database())
        raw_single = run(
            ["pg_restore", "--single-transaction", "--no-owner", f"--dbname={restored[-1]}", str(faber_archive)],
            pg_env(restored[-1]),
        )
        restored.append(fresh_database())
        raw_parallel = run(
            ["pg_restore", f"--jobs={JOBS}", "--no-owner", f"--dbname={restored[-1]}", str(faber_archive)],
            pg_env(restored[-1]),
        )
        faber_restore = run(
            [*faber, "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json", "--cwd", str(project)], faber_env
        )
        faber_restore_step = restore_step_seconds(project)
    finally:
        for name in [target, *restored]:
            drop(name)
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"backup (custom format, one job; archive {archive_bytes / 1e6:.0f} MB)")
    print(f"  faber backup:                       {faber_backup:7.2f}s")
    ratio = faber_backup / raw_dump
    print(f"  pg_dump -Fc:                        {raw_dump:7.2f}s   ratio faber / pg_dump {ratio:.2f} (goal <= 1.1)")
    print(f"  pg_dump -Fd -j{JOBS} (reference):        {directory_dump:7.2f}s")
    print("restore of the same archive")
    step = f" (restore step {faber_restore_step:.2f}s)" if faber_restore_step else ""
    print(f"  faber rollback --to:                {faber_restore:7.2f}s{step}")
    ratio = faber_restore / raw_single
    print(f"  pg_restore --single-transaction:    {raw_single:7.2f}s   ratio faber / it {ratio:.2f}")
    ratio = faber_restore / raw_parallel
    goal = "(goal <= 1.1)"
    print(f"  pg_restore -j{JOBS} (not atomic):       {raw_parallel:7.2f}s   ratio faber / it {ratio:.2f} {goal}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
