"""Start-up stays lean: a command on one PostgreSQL database imports none of the libraries only
other paths need (docs/performance.md). Checked on the modules the process loaded, not on a clock,
so the test fails on the import, on a loaded machine or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# faber's CLI run as the entry point does, then the names of every module it loaded written out.
PROBE = """\
import dataclasses, json, sys
import typer.main
from pydantic import BaseModel
modules_file, sys.argv = sys.argv[1], ["faber", *sys.argv[2:]]
built_commands = []
build_command = typer.main.get_command_from_info
def recording_build(command_info, **kwargs):
    command = build_command(command_info, **kwargs)
    built_commands.append(command.name)
    return command
typer.main.get_command_from_info = recording_build
from faber_core.cli import main
def built_models():
    found, classes = set(), [BaseModel]
    while classes:
        for model in classes.pop().__subclasses__():
            classes.append(model)
            if model.__module__.startswith("faber") and model.__pydantic_complete__:
                found.add(model.__name__)
    return sorted(found)
def defined_dataclasses():
    return sorted(
        value.__qualname__
        for name, module in list(sys.modules.items())
        if name.startswith("faber")
        for value in vars(module).values()
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == name
    )
try:
    main()
finally:
    with open(modules_file, "w") as out:
        json.dump(
            {
                "modules": sorted(sys.modules),
                "commands": built_commands,
                "models": built_models(),
                "dataclasses": defined_dataclasses(),
            },
            out,
        )
"""

NOT_FOR_ONE_POSTGRESQL_DATABASE = {
    "rich": "only a terminal's live display renders with it",
    "opentelemetry.sdk": "only when an exporter is configured",
    "boto3": "only the RDS backup provider",
    "pymysql": "only a MySQL/MariaDB URL",
    "faber_core.fleet": "only a fleet environment",
    "faber_core.targets": "only a fleet environment, or one of its targets",
}

NOT_BUILT_FOR_A_STATUS = {"DeployResult", "FailedDeployResult", "PreviewResult", "LintFinding", "WritesSinceBackup"}

NOT_FOR_A_STATUS = {
    "faber_prisma.applier": "the Prisma hooks import it when they apply, validate or resolve",
    "faber_prisma.preview": "only a preview",
    "faber_prisma.cli": "only `faber migrate dev` runs the Prisma CLI",
    "faber_core.backup.database_properties": "only a pg_dump backup or restore reads or gives them",
    "faber_core.backup.swap": "a status names what a killed swap left from faber_core.postgres.scratch",
    "faber_core.backup.restore": "only a restore",
    "faber_core.postgres.rehearsal": "a status names a leftover rehearsal copy from faber_core.postgres.scratch",
    "faber_core.workflow": "a status reads through faber_core.status_reads; the workflow deploys, rolls back, resolves",
    "faber_core.backup.store": "the backup providers import it when a backup is taken, listed or restored",
    "faber_core.backup.writes": "only a backup, a restore or a deploy's measured migrations",
    "faber_core.backup.mysql_dumps": "the mysqldump provider's hooks import it when they dump or restore",
}

OTHER_TOOLS_OPTIONS = {"NodeToolOptions", "TypeormOptions", "SequelizeOptions"}
"""Options models of tools a Prisma project does not use: declared (their plugins are installed) but never built."""


def run_recording_modules(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    """The run, and what it loaded: its modules, the commands whose parameters typer built,
    faber's models built (validator and serializer) by the end, and faber's dataclasses defined."""
    modules_file = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(modules_file), *args],
        # No OTEL_* variable: no exporter is asked for (the SDK's path has tests of its own).
        env={**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, json.loads(modules_file.read_text())


def imported(modules: set, heavy: str) -> bool:
    return heavy in modules or any(name.startswith(heavy + ".") for name in modules)


def test_deploy_and_status_of_one_postgresql_database_import_no_heavy_library(faber_project, database_url, tmp_path):
    migrations = {
        f"prisma/migrations/2024010100000{number}_t{number}/migration.sql": f"CREATE TABLE t{number} (id bigint);\n"
        for number in (1, 2)
    }
    config = {
        "database": {
            "migration_tool": "prisma",
            "environments": {
                "production": {"database_url_env": "STARTUP_DATABASE_URL", "backup_before_migrate": False}
            },
        }
    }
    project = faber_project(config, migrations)
    env = {"STARTUP_DATABASE_URL": database_url}

    deploy, deploy_run = run_recording_modules(
        tmp_path, "migrate", "production", "--yes", "--cwd", str(project), env=env
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    status, status_run = run_recording_modules(
        tmp_path, "status", "production", "--json", "--cwd", str(project), env=env
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert len(json.loads(status.stdout)["result"]["applied"]) == 2
    up_to_date, up_to_date_run = run_recording_modules(
        tmp_path, "migrate", "production", "--yes", "--json", "--cwd", str(project), env=env
    )
    assert up_to_date.returncode == 0, up_to_date.stdout + up_to_date.stderr
    assert json.loads(up_to_date.stdout)["result"]["migrations_applied"] == 0

    for run in (deploy_run, status_run, up_to_date_run):
        modules = set(run["modules"])
        assert "psycopg" in modules  # the probe saw the run's modules, the driver it used among them
        loaded = {name: why for name, why in NOT_FOR_ONE_POSTGRESQL_DATABASE.items() if imported(modules, name)}
        assert not loaded, f"imported although {loaded}"
    # Reading the history parses no SQL, and needs none of the Prisma hooks' modules that apply or preview.
    assert not imported(set(status_run["modules"]), "pglast")
    # Nor does a deploy with nothing pending: the safety checks and their parser are imported for pending migrations.
    assert "pglast" in deploy_run["modules"]
    assert not imported(set(up_to_date_run["modules"]), "pglast")
    assert "faber_core.safety.checks" not in up_to_date_run["modules"]
    loaded = {name: why for name, why in NOT_FOR_A_STATUS.items() if imported(set(status_run["modules"]), name)}
    assert not loaded, f"imported although {loaded}"
    assert "faber_prisma.applier" in deploy_run["modules"]  # the deploy imported it when it applied
    # Typer builds the parameters of the command that runs, not of the nine others.
    assert deploy_run["commands"] == ["migrate"] and status_run["commands"] == ["status"]
    # faber's models are built when first used: a status builds none of a deploy's documents.
    assert "DeployResult" in deploy_run["models"] and "MigrationState" in status_run["models"]
    assert not set(status_run["models"]) & NOT_BUILT_FOR_A_STATUS, status_run["models"]
    for run in (deploy_run, status_run):
        assert not set(run["models"]) & OTHER_TOOLS_OPTIONS, run["models"]


def test_status_of_a_plain_sql_project_imports_neither_the_applier_nor_the_backup_modules(
    faber_project, database_url, tmp_path
):
    config = {
        "database": {
            "migration_tool": "plainsql",
            "plainsql": {"folder": "sql"},
            "environments": {
                "production": {"database_url_env": "STARTUP_DATABASE_URL", "backup_before_migrate": False}
            },
        }
    }
    project = faber_project(config, {"sql/V1__t1.sql": "CREATE TABLE t1 (id bigint);\n"})
    env = {"STARTUP_DATABASE_URL": database_url}
    deploy, deploy_run = run_recording_modules(
        tmp_path, "migrate", "production", "--yes", "--cwd", str(project), env=env
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    status, status_run = run_recording_modules(
        tmp_path, "status", "production", "--json", "--cwd", str(project), env=env
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["result"]["applied"] == ["V1__t1"]
    assert "faber_plainsql.applier" in deploy_run["modules"]  # the deploy imported it when it applied
    modules = set(status_run["modules"])
    not_needed = {
        "faber_plainsql.applier": "the status reads the history through faber_plainsql.status",
        "faber_core.support.sql": "only the applier and the preview split or estimate SQL",
        **NOT_FOR_A_STATUS,
    }
    loaded = {name: why for name, why in not_needed.items() if imported(modules, name)}
    assert not loaded, f"imported although {loaded}"
    assert "faber_plainsql.status" in modules
    # The mysqldump provider is registered by every command; its restore's dataclasses are not defined.
    assert not {"RestoreProgress", "Swap"} & set(status_run["dataclasses"]), status_run["dataclasses"]
