"""A fleet deploy of 100 databases x 5 migrations: one at a time vs ``--concurrency 8``.

Both runs are ``faber migrate tenants --json`` on fresh databases (sqlfiles handler, no backup,
no lint, health checks as configured by default), in the same run of this script. Printed: each
wall time, faber's own CPU time per target, the speed-up, the bound faber's CPU alone sets on it
(one interpreter lock: sequential wall time per target / CPU per target at --concurrency 8),
and the per-target overhead of the sequential run: its wall time per target minus the time the
target's five migrations took (from each target's history row).

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


def deploy(directory: Path, databases: list[str], concurrency: int, pythonpath: str | None) -> tuple[float, float]:
    """The deploy's wall time and faber's CPU per target (both in seconds)."""
    listing = "\n".join(f"t{index:03d} {database_url(name)}" for index, name in enumerate(databases))
    env = {
        **os.environ,
        "TENANT_DATABASE_URLS": listing,
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
        "JOB_COMPLETION_INDEX": "",
        **({"PYTHONPATH": pythonpath} if pythonpath else {}),
    }
    argv = [sys.executable, "-m", "faber_core", "migrate", "tenants", "--json", "--concurrency", str(concurrency)]
    started, cpu = time.monotonic(), _children_cpu()
    run = subprocess.run(argv, cwd=directory, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.monotonic() - started
    per_target_cpu = (_children_cpu() - cpu) / len(databases)
    version = f" (baseline {pythonpath})" if pythonpath else ""
    print(f"--concurrency {concurrency}{version}: faber's own CPU {per_target_cpu * 1000:.0f} ms per target")
    document = json.loads(run.stdout)
    if run.returncode != 0 or document["result"]["summary"] != {"deployed": len(databases)}:
        sys.exit(f"the fleet deploy failed ({run.returncode}): {run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return elapsed, per_target_cpu


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
                    elapsed, cpu = deploy(directory, databases, concurrency, version)
                    results[version, concurrency] = (elapsed, migration_seconds(databases), cpu)
                finally:
                    drop_databases(databases)
    print(f"{TARGETS} databases x {len(MIGRATIONS)} migrations; load average after: {os.getloadavg()[0]:.2f}")
    for version in versions:
        sequential, applying, _ = results[version, 1]
        concurrent, _, cpu = results[version, 8]
        overhead = (sequential - applying) / TARGETS
        if version:
            print(f"baseline ({version}):")
        print(f"--concurrency 1: {sequential:.1f} s ({sequential / TARGETS * 1000:.0f} ms per target)")
        print(f"--concurrency 8: {concurrent:.1f} s ({concurrent / TARGETS * 1000:.0f} ms per target)")
        print(f"speed-up: {sequential / concurrent:.1f}x (goal: >= 4x)")
        # One interpreter lock: a concurrent target takes at least faber's CPU per target.
        print(f"bound from faber's own CPU alone: {sequential / TARGETS / cpu:.1f}x")
        print(
            f"per-target overhead (sequential, beyond the migrations' own {applying / TARGETS * 1000:.0f} ms): "
            f"{overhead * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
