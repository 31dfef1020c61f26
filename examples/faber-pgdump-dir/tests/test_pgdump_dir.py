"""The pgdump-dir provider through the real ``faber`` command on a real PostgreSQL: a deploy backs
up in directory format, a rollback brings the database back whole, a broken archive changes nothing."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest
from psycopg import sql

from faber_core.testing.fixtures import CANARY_PASSWORD

USERS = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n"
ORDERS = "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));\n"


def faber(run_faber, project, env, *args):
    return run_faber(*args, "--json", "--cwd", str(project), env=env)


def rollback_to(run_faber, project, env, backup_id):
    return faber(run_faber, project, env, "rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes")


def test_a_deploy_backs_up_in_directory_format_and_lists_it(pgdump_dir_project, run_faber):
    project, env = pgdump_dir_project({"001_users": USERS})

    deploy = faber(run_faber, project, env, "migrate", "production", "--yes")
    listing = faber(run_faber, project, env, "backups", "production")

    assert deploy.returncode == 0, deploy.output
    backup_id = deploy.json["result"]["backup_id"]
    archive = project / ".faber/backups/production" / f"{backup_id}.dir"
    assert (archive / "toc.dat").is_file()  # pg_dump's directory format
    assert oct((archive.parent).stat().st_mode & 0o777) == "0o700"
    assert [b["id"] for b in listing.json["result"]["backups"]] == [backup_id]
    assert listing.json["result"]["backups"][0]["provider"] == "pgdump-dir"
    # the URL's password reaches pg_dump only in its environment: never an output, never a file
    assert CANARY_PASSWORD not in deploy.output + listing.output
    files = [path for path in (project / ".faber").rglob("*") if path.is_file()]
    assert files and not [path for path in files if CANARY_PASSWORD.encode() in path.read_bytes()]


def test_a_rollback_brings_back_the_backup_and_keeps_fabers_history(pgdump_dir_project, run_faber, query):
    project, env = pgdump_dir_project({"001_users": USERS})
    assert faber(run_faber, project, env, "migrate", "production", "--yes").returncode == 0
    query("INSERT INTO users VALUES (1, 'a@example.com')")
    backup = faber(run_faber, project, env, "backup", "production")
    backup_id = backup.json["result"]["id"]
    (project / "migrations/002_orders.sql").write_text(ORDERS)
    assert faber(run_faber, project, env, "migrate", "production", "--yes").returncode == 0
    query("INSERT INTO users VALUES (2, 'b@example.com'); INSERT INTO orders VALUES (1, 2)")
    deploys_before = query("SELECT count(*) FROM faber.faber_deployments")[0][0]

    rollback = rollback_to(run_faber, project, env, backup_id)

    assert rollback.returncode == 0, rollback.output
    assert query("SELECT to_regclass('orders')") == [(None,)]
    assert query("SELECT id, email FROM users") == [(1, "a@example.com")]
    assert query("SELECT name FROM sqlfiles_migrations") == [("001_users",)]
    assert query("SELECT count(*) FROM faber.faber_deployments")[0][0] > deploys_before  # faber's schema kept


def test_a_broken_archive_fails_the_rollback_and_changes_nothing(pgdump_dir_project, run_faber, query):
    project, env = pgdump_dir_project({"001_users": USERS})
    assert faber(run_faber, project, env, "migrate", "production", "--yes").returncode == 0
    backup_id = faber(run_faber, project, env, "backup", "production").json["result"]["id"]
    query("INSERT INTO users VALUES (1, 'kept@example.com')")
    archive = project / ".faber/backups/production" / f"{backup_id}.dir"
    (archive / "toc.dat").write_bytes(b"not an archive")

    rollback = rollback_to(run_faber, project, env, backup_id)

    assert rollback.returncode == 8, rollback.output
    assert "nothing was changed" in rollback.json["error"]
    assert query("SELECT id, email FROM users") == [(1, "kept@example.com")]


@pytest.fixture
def role_denied_a_table(database_url, query):
    """``database_url`` as a role that owns the database but may not read its table ``secret``
    (the superuser's): pg_dump, connecting as that role, fails on it."""
    parts = urlsplit(database_url)
    database = parts.path.lstrip("/")
    role = sql.Identifier(f"dumper_{database}")
    query(sql.SQL("CREATE ROLE {} LOGIN").format(role).as_string())
    try:
        query(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), role).as_string())
        query("CREATE TABLE secret (id int)")
        yield urlunsplit(parts._replace(netloc=f"dumper_{database}@{parts.netloc.rpartition('@')[2]}"))
    finally:
        query(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(sql.Identifier(database)).as_string())
        query(sql.SQL("DROP OWNED BY {}").format(role).as_string())
        query(sql.SQL("DROP ROLE {}").format(role).as_string())


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["migrate", "production", "--yes"], "Failed to create pre-migration backup: pg_dump failed:"),
        (["backup", "production"], "Failed to create backup: pg_dump failed:"),
    ],
)
def test_a_failed_dump_advises_running_the_same_command_again(
    pgdump_dir_project, run_faber, query, role_denied_a_table, command, message
):
    """Never "faber backup" as the provider's own advice: a deploy adds the spec's fallbacks after it."""
    project, env = pgdump_dir_project({"001_users": USERS}, url=role_denied_a_table)

    failed = faber(run_faber, project, env, *command)

    assert failed.returncode == 4, failed.output
    assert failed.json["code"] == "BACKUP_FAILED"
    assert failed.json["error"].startswith(message)
    assert "permission denied for table secret" in failed.json["result"]["backup_error"]
    suggestions = failed.json["recovery"]["suggestions"]
    assert suggestions[0] == (
        "Check that pg_dump is as new as the server and may read every table, then run the same command again"
    )
    assert not [s for s in suggestions if s.startswith("Retry")]
    if command[0] == "migrate":
        assert suggestions[1:] == [
            "Or skip backup (NOT recommended): faber migrate production --skip-backup",
            "Or create manual backup first: faber backup production",
        ]
        assert query("SELECT to_regclass('users')") == [(None,)]
    else:
        assert suggestions == suggestions[:1]


def test_loading_the_plugin_does_not_import_the_archives_module():
    """faber imports every installed plugin at each start, whatever the project's provider: the
    hooks import the archives module when they run."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, faber_pgdump_dir.plugin; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "faber_pgdump_dir.plugin" in loaded and "faber_pgdump_dir.archives" not in loaded
