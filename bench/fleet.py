"""A fleet deploy of 100 databases x 5 migrations: one at a time vs ``--concurrency 8``.

Both runs are ``faber migrate tenants --json`` on fresh databases (sqlfiles handler, no backup,
no lint, health checks as configured by default), in the same run of this script; a CHECKPOINT
after creating the databases writes out their pages first, so neither run pays for that. Printed:
each wall time, faber's own CPU time per target, the server's (PostgreSQL's processes, read from
/proc when the server runs on this machine: other clients of the server count too), the
speed-up, the bounds on it (docs/performance.md: one interpreter lock, so a concurrent target
takes at least faber's CPU per target f; and at least (f + s) / cores, s the server's CPU per target),
and the per-target overhead of the sequential run: its wall time per target minus the time the
target's five migrations took (from each target's history row). For reference, the same
migrations through ``psql`` (a process per database, each migration in its own transaction), one
database at a time and eight at once: the speed-up the machine and the server allow at all.

    python bench/fleet.py            # needs PostgreSQL at 127.0.0.1:5432 (user postgres)

Set FABER_BENCH_TARGETS to change the fleet's size (default 100). ``FABER_BENCH_BASELINE_PYTHONPATH=DIR``
also deploys, right after each of these, with the faber found in DIR (an older checkout's
``faber_core`` linked there), and prints its numbers too, to compare versions in one run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from machine import describe as describe_machine  # bench/machine.py, beside this script
from psycopg import sql

ADMIN_URL = os.environ.get("FABER_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGETS = int(os.environ.get("FABER_BENCH_TARGETS", "100"))
BASELINE = os.environ.get("FABER_BENCH_BASELINE_PYTHONPATH")
MIGRATIONS = {
    "001_accounts": "CREATE TABLE accounts (id bigserial PRIMARY KEY, balance int NOT NULL DEFAULT 0);",
    "002_owner": "ALTER TABLE accounts ADD COLUMN owner text;",
    "003_seed": "INSERT INTO accounts (balance) SELECT g FROM generate_series(1, 100) g;",
    "004_index": "CREATE INDEX accounts_owner ON accounts (owner);",
    "005_audit": "CREATE TABLE audit (id bigserial PRIMARY KEY, account bigint REFERENCES accounts (id));",
}


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def create_databases(count: int) -> list[str]:
    names = [f"faber_bench_fleet_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # Each new database's pages sit dirty in shared buffers: written out now, not by the deploy's sessions.
        conn.execute("CHECKPOINT")
    return names


def drop_databases(names: list[str]) -> None:
    """Together: each DROP DATABASE waits for a checkpoint, and concurrent drops share one."""

    def drop(name: str) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(drop, names))


def project(directory: Path) -> Path:
    config = {
        "database": {
            "migration_tool": "sqlfiles",
            "environments": {
                "tenants": {
                    "targets": {"urls_env": "TENANT_DATABASE_URLS"},
                    "backup_before_migrate": False,
                    "require_approval": False,
                    "lint": "off",
                }
            },
        }
    }
    config_path = directory / ".fractary/plugins/faber-db/config.json"
    config_path.parent.mkdir(parents=True)
    config_path.write_text(json.dumps(config))
    for name, text in MIGRATIONS.items():
        (directory / "migrations").mkdir(exist_ok=True)
        (directory / "migrations" / f"{name}.sql").write_text(text + "\n")
    return directory


def deploy(
    directory: Path, databases: list[str], concurrency: int, pythonpath: str | None
) -> tuple[float, float, float | None]:
    """The deploy's wall time, faber's CPU per target and the server's (None: not on this machine), in seconds."""
    listing = "\n".join(f"t{index:03d} {database_url(name)}" for index, name in enumerate(databases))
    env = {
        **os.environ,
        "TENANT_DATABASE_URLS": listing,
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
        "JOB_COMPLETION_INDEX": "",
        **({"PYTHONPATH": pythonpath} if pythonpath else {}),
    }
    argv = [sys.executable, "-m", "faber_core", "migrate", "tenants", "--json", "--concurrency", str(concurrency)]
    server_before = server_cpu()
    started, cpu = time.monotonic(), _children_cpu()
    run = subprocess.run(argv, cwd=directory, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.monotonic() - started
    per_target_cpu = (_children_cpu() - cpu) / len(databases)
    server_after = server_cpu()
    server = (
        (server_after - server_before) / len(databases)
        if server_before is not None and server_after is not None
        else None
    )
    version = f" (baseline {pythonpath})" if pythonpath else ""
    shown = f", the server's {server * 1000:.0f} ms" if server is not None else ""
    print(f"--concurrency {concurrency}{version}: faber's own CPU {per_target_cpu * 1000:.0f} ms per target{shown}")
    document = json.loads(run.stdout)
    if run.returncode != 0 or document["result"]["summary"] != {"deployed": len(databases)}:
        sys.exit(f"the fleet deploy failed ({run.returncode}): {run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return elapsed, per_target_cpu, server


def raw_psql(databases: list[str], concurrency: int, directory: Path) -> float:
    """The wall time of ``psql`` applying the same migrations to every database, each migration in
    its own transaction, ``concurrency`` databases at once: what the machine and the server allow
    without faber's checks and bookkeeping (and with a process per database)."""
    script = directory / "migrations.psql"
    script.write_text("".join(f"BEGIN;\n{text}\nCOMMIT;\n" for text in MIGRATIONS.values()))

    def apply(name: str) -> None:
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url(name), "-f", str(script)]
        subprocess.run(command, check=True, capture_output=True, timeout=600)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(apply, databases))
    return time.monotonic() - started


def server_cpu() -> float | None:
    """CPU seconds the PostgreSQL server has used: its postmaster, the sessions that ended (the
    postmaster's reaped children) and its live processes; None when it does not run on this
    machine or /proc does not show it."""
    with psycopg.connect(ADMIN_URL) as conn:
        (backend,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        postmaster = int(_stat(backend)[1])
        fields = _stat(postmaster)
    except (OSError, IndexError, ValueError):
        return None
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        try:
            child = _stat(int(entry.name)) if entry.name.isdigit() else None
        except OSError:  # ended meanwhile
            continue
        if child is not None and int(child[1]) == postmaster:
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (state is [0], the parent's pid [1])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children_cpu() -> float:
    """CPU seconds (user and system) of the finished child processes: faber's own cost, steadier than
    wall time on a loaded machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def migration_seconds(databases: list[str]) -> float:
    """The time the migrations themselves took on every target, from the targets' history rows."""
    total = 0.0
    for name in databases:
        with psycopg.connect(database_url(name)) as conn:
            (migrations,) = conn.execute("SELECT migrations FROM faber.faber_deployments").fetchone()
        total += sum(m["duration_seconds"] or 0 for m in migrations)
    return total


def main() -> None:
    print(f"machine: {describe_machine()}", flush=True)
    versions = [None, BASELINE] if BASELINE else [None]
    with tempfile.TemporaryDirectory() as tmp:
        directory = project(Path(tmp))
        results = {}
        for concurrency in (1, 8):
            for version in versions:
                databases = create_databases(TARGETS)
                try:
                    elapsed, cpu, server = deploy(directory, databases, concurrency, version)
                    results[version, concurrency] = (elapsed, migration_seconds(databases), cpu, server)
                finally:
                    drop_databases(databases)
            databases = create_databases(TARGETS)
            try:
                results["psql", concurrency] = raw_psql(databases, concurrency, directory)
            finally:
                drop_databases(databases)
    print(f"{TARGETS} databases x {len(MIGRATIONS)} migrations; load average after: {os.getloadavg()[0]:.2f}")
    alone, together = results["psql", 1], results["psql", 8]
    print(
        f"psql, the same migrations without faber, one database at a time: {alone:.1f} s, 8 at once: "
        f"{together:.1f} s; its speed-up: {alone / together:.1f}x"
    )
    for version in versions:
        sequential, applying, _, _ = results[version, 1]
        concurrent, _, cpu, server = results[version, 8]
        overhead = (sequential - applying) / TARGETS
        if version:
            print(f"baseline ({version}):")
        print(f"--concurrency 1: {sequential:.1f} s ({sequential / TARGETS * 1000:.0f} ms per target)")
        print(f"--concurrency 8: {concurrent:.1f} s ({concurrent / TARGETS * 1000:.0f} ms per target)")
        print(f"speed-up: {sequential / concurrent:.1f}x (goal: >= 4x)")
        # One interpreter lock: a concurrent target takes at least faber's CPU per target.
        print(f"bound from faber's own CPU alone: {sequential / TARGETS / cpu:.1f}x")
        if server is not None:  # the machine's cores for faber and the server together
            cores = os.cpu_count() or 1
            bound = sequential / TARGETS / max(cpu, (cpu + server) / cores)
            print(f"bound from faber's and the server's CPU on {cores} cores: {bound:.1f}x")
        print(
            f"per-target overhead (sequential, beyond the migrations' own {applying / TARGETS * 1000:.0f} ms): "
            f"{overhead * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
