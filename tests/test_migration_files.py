"""Migration files an attacker plants: symlinks out of the migrations folder, FIFOs, bytes that
are not UTF-8. Refused with the file (and byte offset) before anything reads, shows or applies them,
wherever migration SQL is read: the Prisma plugin, faber's safety checks and the sqlfiles handler."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from faber_core.errors import ConfigError
from faber_core.migration_files import decode_sql, read_sql
from faber_core.testing.fixtures import without_root_file_access

SECRET = "ci-token-Zq81xw0"
PRISMA_CONFIG = {
    "database": {
        "migration_tool": "prisma",
        "prisma": {"migrations_dir": "prisma/migrations"},
        "environments": {"production": {"database_url_env": "APP_URL", "lock_wait_seconds": 1}},
    }
}


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (tmp_path / "outside.sql").write_text("SELECT 1;")
    (folder / "001.sql").symlink_to(tmp_path / "outside.sql")
    (folder / "002.sql").symlink_to("/proc/self/environ")

    for name in ("001.sql", "002.sql"):
        with pytest.raises(ConfigError, match=f"Migration file {name} resolves outside its folder"):
            read_sql(folder / name, folder, shown=name)


def test_symlinks_inside_the_folder_and_a_symlinked_folder_are_fine(tmp_path):
    real = tmp_path / "shared" / "migrations"
    real.mkdir(parents=True)
    (real / "base.sql").write_text("SELECT 1;")
    (real / "001.sql").symlink_to("base.sql")
    linked = tmp_path / "project-migrations"
    linked.symlink_to(real)

    assert read_sql(linked / "001.sql", linked) == "SELECT 1;"


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "001.sql")

    with pytest.raises(ConfigError, match="not a regular file"):
        read_sql(tmp_path / "001.sql", tmp_path)


def test_prisma_refuses_a_directory_where_a_migration_script_belongs(faber_project, run_faber, database_url, query):
    project = faber_project(PRISMA_CONFIG, {"prisma/migrations/20240101000000_init/migration.sql": "SELECT 1;"})
    (project / "prisma/migrations/20240102000000_next/migration.sql").mkdir(parents=True)

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env={"APP_URL": database_url})

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID", run.json
    assert "20240102000000_next/migration.sql is not a regular file (a directory" in run.json["error"]
    assert query("SELECT to_regclass('_prisma_migrations')") == [(None,)]


def test_bytes_that_are_not_utf8_are_refused_with_their_offset():
    data = b"CREATE TABLE t (name text);\nINSERT INTO t VALUES ('Jos" + b"\xe9');\n"

    with pytest.raises(ConfigError) as raised:
        decode_sql(data, "m/001.sql")

    assert "m/001.sql is not valid UTF-8: byte 0xe9 at byte offset 54 (line 2, column 27)" in raised.value.message
    with pytest.raises(ConfigError, match="NUL byte at byte offset 7"):
        decode_sql(b"SELECT \x00;", "m/002.sql")
    assert decode_sql("\ufeffSELECT 'José';".encode(), "m/003.sql") == "SELECT 'José';"


def prisma_project(faber_project, tmp_path, script_link=None, script_bytes=None):
    project = faber_project(PRISMA_CONFIG, {"prisma/migrations/20240101000000_init/migration.sql": "SELECT 1;"})
    script = project / "prisma/migrations/20240102000000_next/migration.sql"
    script.parent.mkdir(parents=True)
    if script_link:
        script.symlink_to(script_link)
    else:
        script.write_bytes(script_bytes)
    return project


@pytest.mark.parametrize("command", [("migrate", "production", "--dry-run"), ("status", "production")])
def test_prisma_refuses_a_migration_linked_to_the_process_environment(
    faber_project, run_faber, database_url, tmp_path, command
):
    project = prisma_project(faber_project, tmp_path, script_link="/proc/self/environ")

    run = run_faber(*command, "--json", "--cwd", str(project), env={"APP_URL": database_url, "CI_TOKEN": SECRET})

    assert run.returncode == 2, run.output
    assert "20240102000000_next/migration.sql resolves outside its folder" in run.json["error"]
    assert SECRET not in run.output


def test_prisma_refuses_a_migration_folder_linked_outside(faber_project, run_faber, database_url, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "migration.sql").write_text("SELECT 1;")
    project = faber_project(PRISMA_CONFIG, {"prisma/migrations/20240101000000_init/migration.sql": "SELECT 1;"})
    (project / "prisma/migrations/20240102000000_linked").symlink_to(elsewhere)

    run = run_faber(
        "migrate", "production", "--dry-run", "--json", "--cwd", str(project), env={"APP_URL": database_url}
    )

    assert run.returncode == 2 and "resolves outside the migrations folder" in run.json["error"]


def test_prisma_refuses_latin1_instead_of_storing_replacement_characters(
    faber_project, run_faber, database_url, tmp_path, query
):
    project = prisma_project(
        faber_project,
        tmp_path,
        script_bytes=b"CREATE TABLE people (name text);\nINSERT INTO people VALUES ('Jos\xe9');",
    )

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env={"APP_URL": database_url})

    assert run.returncode == 2, run.output
    assert "20240102000000_next/migration.sql is not valid UTF-8: byte 0xe9 at byte offset 64" in run.json["error"]
    assert query("SELECT to_regclass('people'), to_regclass('_prisma_migrations')") == [(None, None)]


def test_the_sqlfiles_handler_and_the_safety_checks_refuse_too(
    faber_project, run_faber, database_url, tmp_path, monkeypatch
):
    """sqlfiles reads the file itself; the lint's migration_sql reads it again: both refuse it."""
    from faber_core.context import open_context
    from faber_core.models import LocalMigration
    from faber_core.safety.checks import migration_sql

    (tmp_path / "secret.sql").write_text(f"SELECT '{SECRET}';")
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    (project / "migrations/002_secret.sql").symlink_to(tmp_path / "secret.sql")

    run = run_faber(
        "migrate", "production", "--dry-run", "--json", "--cwd", str(project),
        env={"APP_URL": database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"},
    )  # fmt: skip

    assert run.returncode == 2 and "migrations/002_secret.sql resolves outside its folder" in run.json["error"]
    assert SECRET not in run.output
    monkeypatch.setenv("APP_URL", database_url)
    context = open_context(project, "production", "preview-migrations")
    with pytest.raises(ConfigError, match="resolves outside its folder"):
        migration_sql(context, LocalMigration(name="002_secret", path="migrations/002_secret.sql"))


@pytest.mark.parametrize("args", [("migrate", "production", "--yes", "--json"), ("status", "production")])
def test_a_migration_whose_file_name_is_not_utf8_is_refused_before_anything_runs(
    faber_project, run_faber, database_url, query, args
):
    """Its name could not be recorded: a deploy failed after its backup, its run unrecorded."""
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    with open(os.fsencode(project / "migrations") + b"/002_caf\xe9.sql", "w") as script:
        script.write("CREATE TABLE posts (id bigint);")
    env = {"APP_URL": database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}

    run = run_faber(*args, "--cwd", str(project), env=env)

    assert run.returncode == 2, run.output
    # The bad byte as an escape, in the JSON document as in the text shown to a person.
    text = run.json["error"] + " " + " ".join(run.json["recovery"]["suggestions"]) if "--json" in args else run.output
    assert "The migration 002_caf\\xe9 has a name that is not UTF-8 text" in text
    assert "Rename migrations/002_caf\\xe9.sql" in text and "Traceback" not in run.output
    assert query("SELECT count(*) FROM pg_namespace WHERE nspname = 'faber'") == [(0,)]
    assert query("SELECT to_regclass('users')") == [(None,)]
    assert not (project / ".faber" / "backups").exists()


def test_a_utf8_name_read_in_the_c_locale_is_refused_saying_how_to_run_faber(
    faber_project, run_faber, database_url, query
):
    """With UTF-8 mode off in the C locale Python reads ``café`` as ASCII with two bad bytes: the
    name is fine, the way faber runs is not, and the message says so instead of "rename it"."""
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);", "migrations/002_café.sql": "SELECT 1;"},
    )
    env = {"APP_URL": database_url, "FABER_PLUGINS": "faber_core.testing.sqlfiles", "PYTHONUTF8": "0", "LC_ALL": "C"}

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 2, run.output
    assert "has a UTF-8 name, but this Python reads file names as ascii" in run.json["error"], run.json
    assert run.json["recovery"]["suggestions"] == ["Run faber with PYTHONUTF8=1, or in a UTF-8 locale (LC_ALL=C.UTF-8)"]
    assert query("SELECT to_regclass('users')") == [(None,)]


@pytest.mark.parametrize(
    ("folder", "mode", "refused"),
    [
        ("prisma/migrations", 0o000, "Cannot read the migrations folder prisma/migrations: Permission denied"),
        ("prisma/migrations", 0o100, "Cannot read the migrations folder prisma/migrations: Permission denied"),
        ("prisma/migrations", 0o400, "Cannot read the migrations folder prisma/migrations: Permission denied"),
        (
            "prisma/migrations/20240102000000_next",
            0o000,
            "Cannot read migration file prisma/migrations/20240102000000_next/migration.sql: Permission denied",
        ),
    ],
    ids=["migrations-folder-000", "migrations-folder-search-only", "migrations-folder-list-only", "migration-000"],
)
def test_a_migration_folder_faber_may_not_read_is_exit_2_naming_it(
    faber_project, database_url, query, folder, mode, refused
):
    """It was an unexpected error (PermissionError, exit 1, "please report this as a bug")."""
    project = faber_project(
        PRISMA_CONFIG,
        {
            "prisma/migrations/20240101000000_init/migration.sql": "CREATE TABLE users (id bigint);",
            "prisma/migrations/20240102000000_next/migration.sql": "CREATE TABLE posts (id bigint);",
        },
    )
    os.chmod(project / folder, mode)
    try:
        run = subprocess.run(
            [*without_root_file_access(), sys.executable, "-m", "faber_core", "migrate", "production"]
            + ["--yes", "--json"],
            cwd=project,
            env={**os.environ, "APP_URL": database_url},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.chmod(project / folder, 0o755)  # for the temporary folder's removal

    assert run.returncode == 2, run.stdout + run.stderr
    assert json.loads(run.stdout)["error"] == refused
    assert query("SELECT to_regclass('users')") == [(None,)]
    assert not (project / ".faber" / "backups").exists()


def _count_file_type_lookups(monkeypatch) -> list[str]:
    """Every os.stat and os.lstat made from now on, by the path asked about."""
    asked: list[str] = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def counted(path, *args, real=real, **kwargs):
            asked.append(str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, counted)
    return asked


def test_a_migration_file_is_looked_up_once_as_it_is_read(tmp_path, monkeypatch):
    # Its lstat says whether it is a symlink: the check that it stays in its folder asks no more.
    (tmp_path / "001.sql").write_text("SELECT 1;")
    asked = _count_file_type_lookups(monkeypatch)

    assert read_sql(tmp_path / "001.sql", tmp_path, shown="001.sql") == "SELECT 1;"
    assert asked == [str(tmp_path / "001.sql")]


def test_prisma_reads_a_plain_migration_folder_with_one_lookup_of_its_script(faber_project, run_context, monkeypatch):
    # A status reads every folder: the listing says which entries are plain folders (200 folders
    # cost 800 stat calls before, 200 now). A symlinked folder is still followed and checked
    # (test_symlinks_inside_the_folder_and_a_symlinked_folder_are_fine).
    from faber_prisma.migrations import read_migrations

    project = faber_project(
        PRISMA_CONFIG,
        {"prisma/migrations/001_a/migration.sql": "SELECT 1;", "prisma/migrations/002_b/migration.sql": "SELECT 2;"},
    )
    (project / "prisma/migrations/003_empty").mkdir()
    (project / "prisma/migrations/notes.txt").write_text("not a migration")
    monkeypatch.setenv("APP_URL", "postgresql://app@127.0.0.1/app")
    context = run_context(project)
    asked = _count_file_type_lookups(monkeypatch)

    folders = read_migrations(context)

    assert [(folder.name, folder.path) for folder in folders] == [
        ("001_a", "prisma/migrations/001_a/migration.sql"),
        ("002_b", "prisma/migrations/002_b/migration.sql"),
        ("003_empty", "prisma/migrations/003_empty"),
    ]
    entries = str(project / "prisma/migrations") + "/"
    # Left out: the migrations folder's own check that faber may search it ("migrations/.").
    assert sorted(path for path in asked if path.startswith(entries) and path != entries + ".") == [
        str(project / "prisma/migrations" / name / "migration.sql") for name in ("001_a", "002_b", "003_empty")
    ]
