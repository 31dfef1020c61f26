"""faber's overhead on ORM deploys: 300 generated TypeORM and 300 Sequelize migrations, faber
against the ORM's own CLI applying the same migrations to a fresh database.

- TypeORM: ``typeorm migration:run -d data-source.js -t each`` (a transaction per migration, as
  faber runs them) against ``faber migrate ENV --yes``;
- Sequelize: ``sequelize-cli db:migrate`` against ``faber migrate ENV --yes``.

Each migration creates a table and inserts a row (``queryRunner.query`` / ``queryInterface``).
faber runs with its defaults except the backup (off, as the CLI takes none) and, since code
migrations can only be linted by rehearsing them on a copy, the lint (off: it is a separate
cost, reported by ``faber migrate --dry-run``). Runs alternate, RUNS of each; printed: the
medians and faber's wall time minus the CLI's (goal <= 0.3 s), and the CPU each used (faber's
with its Node runner's): on a shared machine the wall times move by seconds with the load, the
CPU much less.

    python bench/orm_overhead.py     # needs PostgreSQL at 127.0.0.1:5432 and Node with npm

The ORM CLIs come from bench/orm-project (``npm ci`` on the first run, from npm's cache when
it has them). ``FABER_BENCH_RUNS`` sets the runs of each (default 3);
``FABER_BENCH_BASELINE_PYTHONPATH=DIR`` also runs, in the same alternation, the
faber found in DIR (an older checkout's ``faber_core`` and plugin packages linked there).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from machine import describe as describe_machine  # bench/machine.py, beside this script
from psycopg import sql

ADMIN_URL = os.environ.get("FABER_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
NODE_PROJECT = Path(__file__).parent / "orm-project"
MIGRATIONS = 300
RUNS = int(os.environ.get("FABER_BENCH_RUNS", "3"))
ENVIRONMENT = "bench"
BASELINE = os.environ.get("FABER_BENCH_BASELINE_PYTHONPATH")


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def fresh_database(created: list[str]) -> str:
    name = f"faber_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    created.append(name)
    return name


def drop_all(created: list[str]) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in created:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def install_node_project() -> Path:
    if not (NODE_PROJECT / "node_modules/.bin/sequelize-cli").exists():
        npm = shutil.which("npm") or sys.exit("npm is not installed: the ORM CLIs need Node and npm")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"], cwd=NODE_PROJECT, check=True)
    return NODE_PROJECT / "node_modules"


def write_config(project: Path, tool: str, options: dict) -> None:
    environment = {"database_url_env": "BENCH_DATABASE_URL", "backup_before_migrate": False, "lint": "off"}
    config = {"database": {"migration_tool": tool, tool: options, "environments": {ENVIRONMENT: environment}}}
    (project / ".fractary/plugins/faber-db").mkdir(parents=True)
    (project / ".fractary/plugins/faber-db/config.json").write_text(json.dumps(config))


def typeorm_project(directory: Path, node_modules: Path) -> Path:
    project = directory / "typeorm"
    (project / "migrations").mkdir(parents=True)
    (project / "node_modules").symlink_to(node_modules, target_is_directory=True)
    (project / "package.json").write_text('{"name": "bench-typeorm", "private": true}\n')
    (project / "data-source.js").write_text(
        'const { DataSource } = require("typeorm");\n'
        'module.exports = { AppDataSource: new DataSource({ type: "postgres", url: process.env.BENCH_DATABASE_URL,'
        " migrations: [`${__dirname}/migrations/*.js`] }) };\n"
    )
    for number in range(1, MIGRATIONS + 1):
        timestamp = 1700000000000 + number
        (project / f"migrations/{timestamp}-Table{number}.js").write_text(
            f"module.exports = class Table{number}{timestamp} {{\n"
            "  async up(queryRunner) {\n"
            f'    await queryRunner.query(`CREATE TABLE "t{number}" ("id" SERIAL PRIMARY KEY, "name" varchar)`);\n'
            f"    await queryRunner.query(`INSERT INTO \"t{number}\" (\"name\") VALUES ('row')`);\n"
            "  }\n"
            f'  async down(queryRunner) {{ await queryRunner.query(`DROP TABLE "t{number}"`); }}\n'
            "};\n"
        )
    write_config(project, "typeorm", {"data_source": "data-source.js"})
    return project


def sequelize_project(directory: Path, node_modules: Path) -> Path:
    project = directory / "sequelize"
    (project / "db/migrations").mkdir(parents=True)
    (project / "node_modules").symlink_to(node_modules, target_is_directory=True)
    (project / "package.json").write_text('{"name": "bench-sequelize", "private": true}\n')
    (project / ".sequelizerc").write_text(
        'const path = require("path");\n'
        'module.exports = { config: path.resolve("db", "config.json"),'
        ' "migrations-path": path.resolve("db", "migrations") };\n'
    )
    (project / "db/config.json").write_text(
        json.dumps({ENVIRONMENT: {"use_env_variable": "BENCH_DATABASE_URL", "dialect": "postgres", "logging": False}})
    )
    for number in range(1, MIGRATIONS + 1):
        (project / f"db/migrations/20240101{number:06d}-table-{number}.js").write_text(
            '"use strict";\nmodule.exports = {\n'
            "  async up(queryInterface, Sequelize) {\n"
            f'    await queryInterface.createTable("t{number}", {{ id: {{ type: Sequelize.INTEGER, autoIncrement: true,'
            " primaryKey: true }, name: Sequelize.STRING });\n"
            f'    await queryInterface.bulkInsert("t{number}", [{{ name: "row" }}]);\n'
            "  },\n"
            f'  async down(queryInterface) {{ await queryInterface.dropTable("t{number}"); }},\n'
            "};\n"
        )
    write_config(project, "sequelize", {})
    return project


@dataclass
class Run:
    wall: float
    cpu: float
    """User and system CPU of the command and the processes it waited for (faber's Node runner)."""


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Run(elapsed, cpu)


def compare(name: str, project: Path, cli: list[str], created: list[str]) -> dict[str, list[Run]]:
    faber = [sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--yes", "--cwd", str(project)]
    runs: dict[str, list[Run]] = {"faber": [], "CLI": [], "baseline faber": []}
    for _ in range(RUNS):
        env = {**os.environ, "BENCH_DATABASE_URL": database_url(fresh_database(created))}
        runs["faber"].append(timed(faber, project, env))
        env = {**os.environ, "BENCH_DATABASE_URL": database_url(fresh_database(created))}
        runs["CLI"].append(timed(cli, project, env))
        if BASELINE:
            env = {**os.environ, "BENCH_DATABASE_URL": database_url(fresh_database(created)), "PYTHONPATH": BASELINE}
            runs["baseline faber"].append(timed(faber, project, env))
        latest = [f"{who} {times[-1].wall:.2f}s (CPU {times[-1].cpu:.2f}s)" for who, times in runs.items() if times]
        print(f"  {name}: {', '.join(latest)}; load {os.getloadavg()[0]:.1f}", flush=True)
    return runs


def median(runs: list[Run], measure: str) -> float:
    return statistics.median(getattr(run, measure) for run in runs)


def main() -> None:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    print(f"machine: {describe_machine()}", flush=True)
    node_modules = install_node_project()
    created: list[str] = []
    results = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            typeorm = typeorm_project(Path(scratch), node_modules)
            results["TypeORM (migration:run -t each)"] = compare(
                "typeorm",
                typeorm,
                [str(node_modules / ".bin/typeorm"), "migration:run", "-d", "data-source.js", "-t", "each"],
                created,
            )
            sequelize = sequelize_project(Path(scratch), node_modules)
            results["Sequelize (sequelize-cli db:migrate)"] = compare(
                "sequelize",
                sequelize,
                [str(node_modules / ".bin/sequelize-cli"), "db:migrate", "--env", ENVIRONMENT],
                created,
            )
    finally:
        drop_all(created)
    print(f"{MIGRATIONS} generated migrations each, median of {RUNS} alternating runs")
    for name, runs in results.items():
        faber, cli = median(runs["faber"], "wall"), median(runs["CLI"], "wall")
        print(f"  {name}: faber {faber:.2f}s, CLI {cli:.2f}s, faber - CLI = {faber - cli:+.2f}s (goal <= 0.3 s)")
        faber_cpu, cli_cpu = median(runs["faber"], "cpu"), median(runs["CLI"], "cpu")
        print(f"    CPU: faber with its runner {faber_cpu:.2f}s, CLI {cli_cpu:.2f}s: {faber_cpu - cli_cpu:+.2f}s")
        if runs["baseline faber"]:
            baseline, baseline_cpu = median(runs["baseline faber"], "wall"), median(runs["baseline faber"], "cpu")
            print(
                f"    baseline faber ({BASELINE}): {baseline:.2f}s, baseline - CLI = {baseline - cli:+.2f}s;"
                f" CPU {baseline_cpu:.2f}s, {baseline_cpu - cli_cpu:+.2f}s"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
