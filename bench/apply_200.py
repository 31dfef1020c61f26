"""200 trivial Prisma migrations: ``faber migrate`` against ``psql`` applying the same files.

Both apply the same 200 ``migration.sql`` files to a fresh database, each migration in its own
transaction: psql runs one script that wraps each file in ``BEGIN`` / ``COMMIT`` (one psql
process, as a hand-rolled deploy script would), faber runs ``faber migrate ENV --yes`` (native
Prisma applier, no backup, health checks on, ``_prisma_migrations`` written as Prisma writes it).
The runs alternate, RUNS of each; printed: each median, their ratio (goal: faber / psql <= 1.5),
and the time faber takes from its start to its first query (import time, goal <= 120 ms), and
``faber status`` on the up-to-date database against a ``psql -c 'SELECT 1'`` (goal <= 0.3 s).

    python bench/apply_200.py      # needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust)

The machine's load (``uptime``) is printed with the numbers: on a shared machine they move.
``FABER_BENCH_BASELINE_PYTHONPATH=DIR`` also runs, in the same alternation, the faber found in DIR
(e.g. an older checkout's ``faber_core`` and plugin packages linked there), to compare versions:
its deploys, its ``faber status`` and its start to first query.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql
from machine import describe as describe_machine  # bench/machine.py, beside this script

ADMIN_URL = os.environ.get("FABER_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MIGRATIONS = 200
RUNS = 5
ENVIRONMENT = "bench"
BASELINE = os.environ.get("FABER_BENCH_BASELINE_PYTHONPATH")


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


class Databases:
    """Fresh databases, dropped at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def fresh(self) -> str:
        name = f"faber_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.names.append(name)
        return name

    def drop_all(self) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for name in self.names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def write_project(directory: Path) -> list[Path]:
    """A Prisma project of MIGRATIONS trivial migrations; returns the migration files in order."""
    config = {
        "database": {
            "migration_tool": "prisma",
            "environments": {ENVIRONMENT: {"database_url_env": "BENCH_DATABASE_URL", "backup_before_migrate": False}},
        }
    }
    (directory / ".fractary/plugins/faber-db").mkdir(parents=True)
    (directory / ".fractary/plugins/faber-db/config.json").write_text(json.dumps(config))
    files = []
    for number in range(1, MIGRATIONS + 1):
        folder = directory / "prisma/migrations" / f"2024010100{number:04d}_table_{number}"
        folder.mkdir(parents=True)
        path = folder / "migration.sql"
        path.write_text(f'-- CreateTable\nCREATE TABLE "T{number}" (\n    "id" SERIAL NOT NULL,\n'
                        f'    "name" TEXT,\n\n    CONSTRAINT "T{number}_pkey" PRIMARY KEY ("id")\n);\n')
        files.append(path)
    return files


CPU_SECONDS: list[float] = []
"""User + system CPU time of each timed command (its own process and children, not the server's)."""


# Commands run outside any checkout: a faber_core in the current directory would shadow both the
# installed faber and the baseline's (``python -m`` and ``-c`` put that directory first on sys.path).
NEUTRAL_DIRECTORY = tempfile.gettempdir()


def timed(command: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=NEUTRAL_DIRECTORY)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def first_query_seconds(project: Path, env: dict[str, str]) -> float:
    """From starting ``faber migrate`` to its first connection attempt: the interpreter, the
    imports and the configuration a deploy needs before it talks to the database. The process
    stops there (the connect call is replaced by one that prints the wall clock and exits)."""
    probe = (
        "import sys, time, psycopg\n"
        "def first_query(*args, **kwargs):\n"
        "    print(time.time()); sys.stdout.flush(); import os; os._exit(0)\n"
        "psycopg.connect = psycopg.Connection.connect = first_query\n"
        "sys.argv = ['faber', 'migrate', sys.argv[1], '--yes', '--cwd', sys.argv[2]]\n"
        "from faber_core.cli import main\n"
        "main()\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", probe, ENVIRONMENT, str(project)],
        env=env,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_DIRECTORY,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    try:
        return float(out.stdout.strip().splitlines()[-1]) - started
    except (ValueError, IndexError):
        sys.exit(f"first-query probe failed:\n{out.stdout}\n{out.stderr}")


def milliseconds(runs: list[float]) -> str:
    return f"{statistics.median(runs) * 1000:.0f} ms (runs: {', '.join(f'{r * 1000:.0f}' for r in runs)})"


def median_of(runs: list[float]) -> str:
    return f"{statistics.median(runs):.3f}s (runs: {', '.join(f'{r:.3f}' for r in runs)})"


def main() -> None:
    databases = Databases()
    # The faber beside this interpreter, with its squawk (the lint step), as an activated virtualenv has it.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    print(f"machine: {describe_machine()}", flush=True)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            project = Path(scratch) / "project"
            project.mkdir()
            files = write_project(project)
            driver = Path(scratch) / "psql-driver.sql"
            driver.write_text("".join(f"BEGIN;\n\\i {path}\nCOMMIT;\n" for path in files))
            faber_runs: list[float] = []
            psql_runs: list[float] = []
            status_runs: list[float] = []
            faber_cpu: list[float] = []
            baseline_runs: list[float] = []
            baseline_cpu: list[float] = []
            select_runs: list[float] = []
            first_query_runs: list[float] = []
            baseline_status_runs: list[float] = []
            baseline_first_query_runs: list[float] = []
            first_query_cpu: list[float] = []
            baseline_first_query_cpu: list[float] = []
            last_faber_db = ""
            for _ in range(RUNS):
                name = databases.fresh()
                env = {**os.environ, "BENCH_DATABASE_URL": database_url(name)}
                faber_runs.append(
                    timed([sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--yes", "--cwd", str(project)],
                          env)
                )
                faber_cpu.append(CPU_SECONDS[-1])
                last_faber_db = name
                if BASELINE:
                    env = {**env, "BENCH_DATABASE_URL": database_url(databases.fresh()), "PYTHONPATH": BASELINE}
                    baseline_runs.append(
                        timed([sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--yes", "--cwd",
                               str(project)], env)
                    )
                    baseline_cpu.append(CPU_SECONDS[-1])
                name = databases.fresh()
                psql_env = {**os.environ, "PGDATABASE": name, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
                psql_runs.append(timed(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(driver)], psql_env))
            env = {**os.environ, "BENCH_DATABASE_URL": database_url(last_faber_db)}
            status_command = [sys.executable, "-m", "faber_core", "status", ENVIRONMENT, "--cwd", str(project)]
            select_env = {**os.environ, "PGDATABASE": last_faber_db, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
            baseline_env = {**env, "PYTHONPATH": BASELINE} if BASELINE else None
            for _ in range(RUNS):
                status_runs.append(timed(status_command, env))
                if baseline_env:
                    baseline_status_runs.append(timed(status_command, baseline_env))
                select_runs.append(timed(["psql", "-X", "-q", "-c", "SELECT 1"], select_env))
                first_query_runs.append(first_query_seconds(project, env))
                first_query_cpu.append(CPU_SECONDS[-1])
                if baseline_env:
                    baseline_first_query_runs.append(first_query_seconds(project, baseline_env))
                    baseline_first_query_cpu.append(CPU_SECONDS[-1])
    finally:
        databases.drop_all()
    faber, psql = statistics.median(faber_runs), statistics.median(psql_runs)
    print(f"{MIGRATIONS} trivial Prisma migrations, each in its own transaction, median of {RUNS} alternating runs")
    print(f"  faber migrate: {median_of(faber_runs)}; its own CPU time {statistics.median(faber_cpu):.3f}s")
    print(f"  psql -f:       {median_of(psql_runs)}")
    print(f"  ratio faber / psql: {faber / psql:.2f} (goal <= 1.5)")
    if baseline_runs:
        baseline = statistics.median(baseline_runs)
        print(
            f"  baseline faber ({BASELINE}): {median_of(baseline_runs)}; ratio to psql {baseline / psql:.2f}; "
            f"its own CPU time {statistics.median(baseline_cpu):.3f}s"
        )
    print(
        f"  faber start to first query: {milliseconds(first_query_runs)} (goal <= 120 ms); "
        f"CPU {milliseconds(first_query_cpu)}"
    )
    if baseline_first_query_runs:
        print(
            f"  baseline faber start to first query: {milliseconds(baseline_first_query_runs)}; "
            f"CPU {milliseconds(baseline_first_query_cpu)}"
        )
    print(f"faber status, up to date: {median_of(status_runs)} (goal <= 0.3 s)")
    if baseline_status_runs:
        print(f"  baseline faber status:   {median_of(baseline_status_runs)}")
    print(f"  psql -c 'SELECT 1':      {median_of(select_runs)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
