from __future__ import annotations

import os
from pathlib import Path

import pytest

from faber_core.backup.pg_dump import find_client_dir
from faber_core.errors import BackupFailed
from faber_core.postgres import client_programs
from faber_core.postgres.client_programs import CLIENT_PROGRAMS


def test_refuses_a_pg_dump_older_than_the_server():
    with pytest.raises(BackupFailed) as raised:
        find_client_dir(server_major=99)

    assert "No pg_dump as new as the server (PostgreSQL 99)" in raised.value.message
    assert "postgresql-client-99" in raised.value.suggestions[0]


def test_finds_client_tools_for_the_running_server(postgres_admin_url):
    import psycopg

    with psycopg.connect(postgres_admin_url) as conn:
        major = conn.info.server_version // 10000

    directory = find_client_dir(major)

    assert all((directory / name).exists() for name in CLIENT_PROGRAMS)
    # Debian's pg_wrapper (where it is on PATH) is passed over for the programs it would run.
    assert (directory / "pg_dump").resolve().name != "pg_wrapper"


def client_programs_of(directory: Path, version: str) -> Path:
    """``directory`` holding pg_dump, pg_restore and psql that say they are ``version``."""
    directory.mkdir(parents=True)
    for name in CLIENT_PROGRAMS:
        program = directory / name
        program.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        program.chmod(0o755)
    return directory


@pytest.fixture
def debian_layout(tmp_path, monkeypatch):
    """A machine as Debian's postgresql-common lays it out: the programs on PATH are links to
    ``pg_wrapper`` (which, as it would for a machine whose default cluster is 13, runs 13's), and
    each installed version's programs are in their own directory."""
    wrapper = client_programs_of(tmp_path / "share/postgresql-common", "13.9") / "pg_dump"
    wrapper.rename(wrapper.with_name("pg_wrapper"))
    on_path = tmp_path / "bin"
    on_path.mkdir()
    for name in CLIENT_PROGRAMS:
        (on_path / name).symlink_to(wrapper.with_name("pg_wrapper"))
    root = tmp_path / "lib/postgresql"
    for directory, version in {"9.6": "9.6.24", "13": "13.9", "16": "16.2"}.items():
        client_programs_of(root / directory / "bin", version)
    monkeypatch.setenv("PATH", f"{on_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(client_programs, "DEBIAN_VERSIONS_ROOT", root)
    return root


def test_behind_debian_s_pg_wrapper_the_newest_installed_client_is_used(debian_layout):
    """The wrapper would run the default cluster's pg_dump 13 against a 16 server, which refuses it."""
    assert find_client_dir(16) == debian_layout / "16/bin"
    assert find_client_dir(13) == debian_layout / "16/bin"
    with pytest.raises(BackupFailed) as raised:
        find_client_dir(99)
    assert f"{debian_layout}/16/bin/pg_dump (16)" in raised.value.message


def test_a_pg_dump_on_path_that_is_not_the_wrapper_is_used_as_it_is(debian_layout, tmp_path, monkeypatch):
    own = client_programs_of(tmp_path / "own", "16.4")
    monkeypatch.setenv("PATH", f"{own}{os.pathsep}{os.environ['PATH']}")

    assert find_client_dir(16) == own


def test_a_directory_with_a_program_of_its_own_beside_the_wrapper_s_links_is_used_as_it_is(
    debian_layout, tmp_path, monkeypatch
):
    """A pg_restore script of one's own beside links to the wrapper: the directory was put on PATH
    for it, and the wrapper's choice of version is taken with it."""
    wrapper = debian_layout.parent.parent / "share/postgresql-common/pg_wrapper"
    own = tmp_path / "own"
    own.mkdir()
    for name in ("pg_dump", "psql"):
        (own / name).symlink_to(wrapper)
    (own / "pg_restore").write_text(f'#!/bin/sh\nexec {wrapper} "$@"\n')
    (own / "pg_restore").chmod(0o755)
    monkeypatch.setenv("PATH", f"{own}{os.pathsep}{os.environ['PATH']}")

    assert find_client_dir(13) == own


@pytest.fixture
def unreadable_table_project(faber_project, database_url, postgres_admin_url):
    """A project whose database user owns the database and its ``payroll`` table but may not read
    it (its own privileges revoked; a table of another owner is refused before pg_dump runs, as
    its restore could not give it back): pg_dump, run as that user, fails."""
    import uuid

    import psycopg
    from psycopg import sql

    from faber_core.testing.fixtures import database_url_for

    role = f"faber_nopayroll_{uuid.uuid4().hex[:8]}"
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(role)))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute("CREATE TABLE payroll (id int)")
        conn.execute(
            sql.SQL("ALTER TABLE payroll OWNER TO {r}; REVOKE ALL ON payroll FROM {r}").format(r=sql.Identifier(role))
        )
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}},
            }
        },
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
        "APP_DATABASE_URL": database_url.replace("://postgres:", f"://{role}:"),
    }
    try:
        yield project, env
    finally:
        with psycopg.connect(database_url_for(postgres_admin_url, name), autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_failed_pg_dump_is_named_for_the_command_that_ran_it(unreadable_table_project, run_faber):
    project, env = unreadable_table_project

    manual = run_faber("backup", "production", "--json", "--cwd", str(project), env=env)
    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert manual.returncode == deploy.returncode == 4, manual.output + deploy.output
    assert manual.json["error"] == "Failed to create backup"
    assert "permission denied for table payroll" in manual.json["result"]["backup_error"]
    assert not any("--skip-backup" in advice for advice in manual.json["recovery"]["suggestions"])
    # faber migrate keeps the spec's message and its fallbacks, after pg_dump's own advice.
    assert deploy.json["error"] == "Failed to create pre-migration backup"
    assert deploy.json["result"]["backup_error"] == manual.json["result"]["backup_error"]
    assert deploy.json["recovery"]["suggestions"][-2:] == [
        "Or skip backup (NOT recommended): faber migrate production --skip-backup",
        "Or create manual backup first: faber backup production",
    ]
