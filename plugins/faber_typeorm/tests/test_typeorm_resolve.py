"""`faber resolve --applied` of a TypeORM migration: the row TypeORM itself writes, in the project's
configured migrations table, which `typeorm migration:show` and the next deploy read as executed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from faber_core.testing.faults import KilledInsideAMigration

COPY = "CopyLedger1700000200000"
LATER = "AddLater1700000300000"
TABLE = "app_migrations"
# The project's own DataSource, on the test's database (faber replaces its connection options;
# the typeorm CLI uses them), keeping its history in a table of its own name.
DATA_SOURCE = """const { DataSource } = require("typeorm");

module.exports = {
  AppDataSource: new DataSource({
    type: "TYPE",
    url: process.env.APP_DATABASE_URL,
    migrations: [`${__dirname}/migrations/*.js`],
    migrationsTableName: "TABLE",
  }),
};
""".replace("TABLE", TABLE)


def typeorm_cli_show(project: Path, url: str) -> dict[str, bool]:
    """``typeorm migration:show`` of ``project``: each migration's name and whether TypeORM reads it as executed."""
    shown = subprocess.run(
        [str(project / "node_modules" / ".bin" / "typeorm"), "migration:show", "-d", "data-source.js"],
        cwd=project,
        env={**os.environ, "APP_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # migration:show exits 1 while a migration is pending.
    assert shown.returncode in (0, 1), shown.stdout + shown.stderr
    return {name: mark == "X" for mark, name in re.findall(r"\[(X| )\] (?:\d+ )?(\w+)", shown.stdout)}


def killed_inside_copy(typeorm_migration, request, engine: str) -> tuple[KilledInsideAMigration, Path, str]:
    """COPY (outside a transaction: `transaction = false` on PostgreSQL, DDL on MySQL/MariaDB) and
    LATER pending; a deploy killed (SIGKILL) inside COPY once its copy of the ledger committed."""
    prefix = "" if engine == "postgres" else "mysql_"
    url = request.getfixturevalue(f"{prefix}database_url")
    killed = KilledInsideAMigration(url)
    statements = [killed.copy_statement, "CREATE TABLE ledger_notes (id int)", killed.hold_statement]
    project = request.getfixturevalue(f"{prefix}typeorm_project")(
        {
            "1700000200000-CopyLedger.js": typeorm_migration(COPY, *statements, transaction=engine != "postgres"),
            "1700000300000-AddLater.js": typeorm_migration(LATER, "CREATE TABLE later (id int)"),
        },
        files={"data-source.js": DATA_SOURCE.replace("TYPE", engine)},
        fixture_migrations=False,
        lint="off",
    )
    killed.create_ledger()
    _, code = killed.deploy_stopped_inside(project, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert killed.ledger() == 20
    return killed, project, url


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_resolve_applied_records_a_migration_completed_by_hand_as_typeorm_does(
    typeorm_migration, run_faber, request, engine
):
    """Before, TypeORM could not mark a migration applied: an operator who completed by hand the
    migration a killed deploy was in had no way to say so, and it stayed failed."""
    killed, project, url = killed_inside_copy(typeorm_migration, request, engine)
    assert typeorm_cli_show(project, url) == {COPY: False, LATER: False}

    resolved = run_faber("resolve", "staging", "--applied", COPY, "--json", "--cwd", str(project))
    shown = typeorm_cli_show(project, url)
    rows = killed.query(f"SELECT timestamp, name FROM {TABLE}")

    assert resolved.returncode == 0, resolved.output
    assert (resolved.json["result"]["failed"], resolved.json["result"]["pending"]) == ([], [LATER])
    assert shown == {COPY: True, LATER: False}
    assert rows == [(1700000200000, COPY)]
    killed.next_runs_see_it_applied(run_faber, project, LATER)
    assert typeorm_cli_show(project, url) == {COPY: True, LATER: True}


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_resolve_applied_refuses_a_migration_typeorm_does_not_know_or_has_applied(
    typeorm_migration, run_faber, request, engine
):
    killed, project, url = killed_inside_copy(typeorm_migration, request, engine)
    resolved = run_faber("resolve", "staging", "--applied", COPY, "--json", "--cwd", str(project))
    assert resolved.returncode == 0, resolved.output

    unknown = run_faber("resolve", "staging", "--applied", "Nowhere1700000900000", "--json", "--cwd", str(project))
    applied = run_faber("resolve", "staging", "--applied", COPY, "--json", "--cwd", str(project))

    assert (unknown.returncode, unknown.json["code"]) == (2, "CONFIG_INVALID"), unknown.output
    assert "typeorm has no migration named Nowhere1700000900000" in unknown.json["error"]
    assert (applied.returncode, applied.json["code"]) == (2, "CONFIG_INVALID"), applied.output
    assert f"Migration {COPY} is already applied: typeorm records it in" in applied.json["error"]
    assert TABLE in applied.json["error"]
    assert killed.query(f"SELECT name FROM {TABLE}") == [(COPY,)]
    assert typeorm_cli_show(project, url) == {COPY: True, LATER: False}


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_resolve_applied_killed_once_typeorm_recorded_it_leaves_every_migration_as_it_is(
    typeorm_migration, run_faber, request, engine
):
    """faber killed (SIGKILL) between TypeORM's row and removing its record of the killed deploy:
    the migration is applied, none is failed, and the next deploy applies only LATER."""
    killed, project, url = killed_inside_copy(typeorm_migration, request, engine)

    killed.resolve_applied_killed_once_the_tool_recorded(project, COPY, lambda: typeorm_cli_show(project, url)[COPY])

    killed.next_runs_see_it_applied(run_faber, project, LATER)
