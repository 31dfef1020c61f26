"""The faber command as CI runs it: a subprocess, no terminal, JSON on stdout, exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from faber_core.errors import EXIT_CODES
from faber_core.testing.fixtures import CANARY_PASSWORD

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
USERS = "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);"
BROKEN = "ALTER TABLE users ADD COLUMN email text;"


@pytest.fixture
def cli_project(faber_project, database_url):
    def make(migrations: dict[str, str], **settings) -> tuple[Path, dict[str, str]]:
        env_settings = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1, **settings}
        project = faber_project(
            {"database": {"migration_tool": "sqlfiles", "environments": {"production": env_settings}}},
            {f"migrations/{name}.sql": sql for name, sql in migrations.items()},
        )
        return project, {**SQLFILES, "APP_DATABASE_URL": database_url}

    return make


def assert_no_canary(run, project: Path) -> None:
    assert CANARY_PASSWORD not in run.stdout + run.stderr
    for path in project.rglob("*"):
        if path.is_file() and ".faber/embedded" not in str(path):
            assert CANARY_PASSWORD.encode() not in path.read_bytes(), path


def test_migrate_json_is_one_document_and_progress_goes_to_stderr(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS})

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 0, run.output
    document = run.json
    assert document["status"] == "success" and document["result"]["migrations_applied"] == 1
    assert "🎯 STARTING: Migration Deployer" in run.stderr
    assert "✓ Deploying migration: 001_users" in run.stderr
    assert f"✓ Backup created: {document['result']['backup_id']}" in run.stderr
    assert "✅ COMPLETED: Migration Deployer" in run.stderr  # the end message, for the CI log
    assert "COMPLETED" not in run.stdout
    assert_no_canary(run, project)


def test_with_json_a_failed_run_s_end_message_and_advice_go_to_stderr(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS, "002_broken": "SELECT 1/0;"})

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 6 and run.json["code"] == "MIGRATION_FAILED", run.output
    end = run.stderr[run.stderr.index("❌") :]
    assert "Recovery:" in end and "Review migration: migrations/002_broken.sql" in end
    assert_no_canary(run, project)


PRINTING_PLUGIN = """
from faber_core import hookimpl

print("plugin loaded")


@hookimpl
def faber_audit_event(event, context):
    print(f"debug: saw {event.kind}")
"""


def test_what_a_plugin_prints_on_stdout_does_not_break_the_json_document(cli_project, run_faber, tmp_path):
    project, env = cli_project({"001_users": USERS})
    (tmp_path / "printing_plugin.py").write_text(PRINTING_PLUGIN)
    env = {
        **env,
        "FABER_PLUGINS": f"{env['FABER_PLUGINS']},printing_plugin",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 0, run.output
    assert json.loads(run.stdout)["result"]["migrations_applied"] == 1
    assert "plugin loaded" in run.stderr and "debug: saw" in run.stderr


@pytest.mark.parametrize("flag", ["--json=true", "--json=1"])
def test_a_json_flag_given_a_value_is_a_usage_error_as_json(run_faber, tmp_path, flag):
    run = run_faber("status", "production", flag, cwd=tmp_path)

    assert run.returncode == 2
    assert json.loads(run.stdout)["code"] == "CONFIG_INVALID"


def test_human_output_ends_with_the_summary(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS})

    run = run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env)

    assert run.returncode == 0, run.output
    assert run.stdout.startswith("✅ COMPLETED: Migration Deployer")
    assert "Migrations Applied: 1" in run.stdout and "Rollback available: faber rollback production --to" in run.stdout


def test_a_runs_output_names_the_database_but_not_where_its_server_is(cli_project, run_faber, database_url):
    # CI logs are read by many: every run said "Connecting to HOST:PORT/DATABASE".
    project, env = cli_project({"001_users": USERS})
    host = urlsplit(database_url).hostname

    runs = [
        run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env),
        run_faber("status", "production", "--cwd", str(project), env=env),
        run_faber("backup", "production", "--cwd", str(project), env=env),
    ]

    assert all(run.returncode == 0 for run in runs), [run.output for run in runs]
    database = urlsplit(database_url).path.lstrip("/")
    assert f"… Connecting to {database} as " in runs[0].stderr
    assert all(host not in run.stdout + run.stderr for run in runs), [run.output for run in runs]


def test_cwd_comes_from_faber_db_cwd(cli_project, run_faber, tmp_path):
    project, env = cli_project({"001_users": USERS})

    run = run_faber("status", "production", "--json", env={**env, "FABER_DB_CWD": str(project)}, cwd=tmp_path)

    assert run.returncode == 0, run.output
    assert run.json["result"]["pending"] == ["001_users"]


@pytest.mark.parametrize("how", ["--cwd", "FABER_DB_CWD"])
@pytest.mark.parametrize("kind", ["symlink-loop", "too-long"])
def test_a_project_directory_that_cannot_be_resolved_is_config_invalid(run_faber, tmp_path, how, kind):
    if kind == "symlink-loop":
        chosen = tmp_path / "loop"
        chosen.symlink_to(chosen)
        problem = "loop"
    else:
        chosen = tmp_path / ("a" * 5000)
        problem = "File name too long"
    args, env = (["--cwd", str(chosen)], {}) if how == "--cwd" else ([], {"FABER_DB_CWD": str(chosen)})

    run = run_faber("status", "production", "--json", *args, env=env, cwd=tmp_path)

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID" and problem in run.json["error"], run.json
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("how", "named"), [("--cwd", "--cwd (or a request's working_directory)"), ("FABER_DB_CWD", "FABER_DB_CWD")]
)
def test_a_project_directory_that_does_not_exist_is_named_with_what_gave_it(run_faber, tmp_path, how, named):
    missing = tmp_path / "no-such-project"
    args, env = (["--cwd", str(missing)], {}) if how == "--cwd" else ([], {"FABER_DB_CWD": str(missing)})

    run = run_faber("status", "production", "--json", *args, env=env, cwd=tmp_path)

    assert run.returncode == 2, run.output
    assert run.json["error"] == f"Project directory does not exist: {missing}"
    assert f"Check the path {named} gives" in run.json["recovery"]["suggestions"]


def test_an_environment_with_no_health_checks_says_they_were_skipped_not_passed(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS}, health_checks=[])

    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    health = run_faber("health", "production", "--json", "--cwd", str(project), env=env)

    assert deploy.returncode == 0, deploy.output
    result = deploy.json["result"]
    assert (result["health_check_before"], result["health_check_after"]) == ("skipped", "skipped")
    assert health.returncode == 0, health.output
    assert health.json["result"]["health_check"] == "skipped"


def test_a_migration_that_sets_a_password_column_gets_valid_json_documents(cli_project, run_faber):
    """The password masking (``password=...``) works on each text, not on the JSON around it: it
    swallowed the closing quote of a value ending in ``pwd=x``, and the dry run crashed."""
    sets_a_password = "ALTER TABLE users ADD COLUMN pwd text;\nUPDATE users SET pwd=email"
    project, env = cli_project({"001_users": f"{USERS}\n{sets_a_password}"})
    preview = run_faber("migrate", "production", "--dry-run", "--json", "--cwd", str(project), env=env)
    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    history = run_faber("history", "production", "--json", "--cwd", str(project), env=env)

    assert preview.returncode == 0, preview.output
    assert preview.json["result"]["migrations"][0]["sql"].endswith("UPDATE users SET pwd=***")
    assert deploy.returncode == 0, deploy.output
    assert deploy.json["result"]["migrations_applied"] == 1
    assert history.returncode == 0, history.output
    assert [row["operation"] for row in history.json["result"]["deployments"]] == [
        "deploy-migrations",
        "preview-migrations",
    ]
    audit = [json.loads(line) for line in (project / ".faber" / "audit.log").read_text().splitlines()]
    assert "migration.applied" in {event["kind"] for event in audit}


def test_rollback_to_an_empty_backup_id_is_refused_not_taken_for_the_newest(cli_project, run_faber):
    """`faber rollback ENV --to "$BACKUP_ID" --yes` with the variable unset must not restore anything."""
    project, env = cli_project({"001_users": USERS})
    deployed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    assert deployed.returncode == 0, deployed.output

    run = run_faber("rollback", "production", "--to", "", "--yes", "--json", "--cwd", str(project), env=env)
    status = run_faber("status", "production", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID" and "--to names no backup" in run.json["error"], run.json
    assert status.json["result"]["applied"] == ["001_users"]


def test_no_terminal_and_no_yes_is_refused_with_its_own_exit_code(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS})

    run = run_faber("migrate", "production", "--json", "--cwd", str(project), env=env)

    assert run.returncode == EXIT_CODES["APPROVAL_REQUIRED"]
    assert run.json["code"] == "APPROVAL_REQUIRED"
    status = run_faber("status", "production", "--json", "--cwd", str(project), env=env)
    assert status.json["result"]["applied"] == []


def test_failed_migration_exit_code_and_recovery(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS, "002_broken": BROKEN})

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == EXIT_CODES["MIGRATION_FAILED"], run.output
    document = run.json
    assert document["status"] == "error" and document["operation"] == "deploy-migrations"
    assert document["error"].startswith("Migration 002_broken failed")
    assert document["result"]["failed_migration"] == "002_broken"
    assert document["result"]["migrations_applied_before_failure"] == 1
    assert document["result"]["rollback_initiated"] is True and document["result"]["rollback_status"] == "success"
    backup_id = document["result"]["backup_id"]
    assert document["recovery"]["backup_id"] == backup_id
    # Already rolled back: restoring again is no advice (the spec's example has no rollback_command either).
    assert "rollback_command" not in document["recovery"]
    assert not any("faber rollback" in s for s in document["recovery"]["suggestions"])
    assert_no_canary(run, project)


def test_unreachable_database(faber_project, run_faber):
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL", "connect_timeout_seconds": 2}},
            }
        }
    )
    url = f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:1/app"

    run = run_faber(
        "migrate", "production", "--yes", "--json", "--cwd", str(project), env={**SQLFILES, "APP_DATABASE_URL": url}
    )

    assert run.returncode == EXIT_CODES["HEALTH_CHECK_FAILED"]
    assert run.json["error"] == "Pre-deployment health check failed"
    assert run.json["result"] == {"health_check": "failed", "details": "Database connection refused at 127.0.0.1:1"}
    assert "Retry when issue resolved: faber migrate production" in run.json["recovery"]["suggestions"]
    assert "… Connecting to app as app" in run.stderr
    assert_no_canary(run, project)


def test_the_run_after_a_concurrent_index_build_stopped_halfway_says_what_it_left_not_to_check_the_connection(
    faber_project, run_faber, database_url
):
    """A CREATE INDEX CONCURRENTLY that failed (or was killed) halfway leaves an invalid index and
    its migration recorded as failed. The next run's health check fails on both, and its advice was
    an unreachable database's ("Verify database is running", "Check connection string"), though
    the connectivity check passed: nothing said to drop the index and resolve the migration."""
    project = faber_project(
        {"database": {"migration_tool": "prisma", "environments": {"dev": {"database_url_env": "APP_DATABASE_URL"}}}},
        {
            "prisma/migrations/001_votes/migration.sql": "CREATE TABLE votes (voter int);\n"
            "INSERT INTO votes VALUES (1), (1);",
            "prisma/migrations/002_one_vote_each/migration.sql": "CREATE UNIQUE INDEX CONCURRENTLY votes_voter\n"
            "ON votes (voter);",
        },
    )
    env = {"APP_DATABASE_URL": database_url}

    failed = run_faber("migrate", "dev", "--yes", "--json", "--cwd", str(project), env=env)
    status = run_faber("status", "dev", "--json", "--cwd", str(project), env=env)
    again = run_faber("migrate", "dev", "--yes", "--json", "--cwd", str(project), env=env)

    assert failed.returncode == EXIT_CODES["MIGRATION_FAILED"], failed.output
    assert again.returncode == EXIT_CODES["HEALTH_CHECK_FAILED"], again.output
    assert [check["status"] for check in again.json["result"]["checks"]] == ["passed", "failed", "failed"]
    suggestions = again.json["recovery"]["suggestions"]
    assert suggestions[:3] == [
        "Inspect the history: faber status dev",
        "Drop the invalid index left behind: DROP INDEX CONCURRENTLY public.votes_voter;",
        "002_one_vote_each is recorded as failed: undo what it left behind, then: faber resolve dev --rolled-back "
        "002_one_vote_each (or --applied 002_one_vote_each if you completed it by hand)",
    ], suggestions
    assert not any("Verify database is running" in s or "connection string" in s for s in suggestions), suggestions
    assert suggestions[-1] == "Retry when issue resolved: faber migrate dev"
    # faber status names the index too, before the resolve that would otherwise leave it behind.
    assert status.returncode == EXIT_CODES["MIGRATION_FAILED"], status.output
    told = status.json["recovery"]["suggestions"]
    assert told[0] == "Drop the invalid index left behind: DROP INDEX CONCURRENTLY public.votes_voter;", told


def test_unreachable_database_on_status_says_it_cannot_connect_not_that_a_check_failed(faber_project, run_faber):
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL", "connect_timeout_seconds": 2}},
            }
        }
    )
    url = f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:1/app"

    run = run_faber("status", "production", "--json", "--cwd", str(project), env={**SQLFILES, "APP_DATABASE_URL": url})

    assert run.returncode == EXIT_CODES["HEALTH_CHECK_FAILED"], run.output
    details = "Database connection refused at 127.0.0.1:1"
    assert run.json["error"] == f"Cannot connect to the production database: {details}"
    assert run.json["result"] == {"details": details}
    assert run.json["recovery"]["suggestions"][0] == "Verify database is running"
    assert_no_canary(run, project)


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["migrate", "dry-run"])
def test_unreachable_database_with_health_checks_skipped_says_so_not_that_a_check_failed(
    faber_project, run_faber, dry_run
):
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL", "connect_timeout_seconds": 2}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    url = f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:1/app"

    run = run_faber(
        "migrate",
        "production",
        *dry_run,
        "--skip-health-check",
        "--yes",
        "--json",
        "--cwd",
        str(project),
        env={**SQLFILES, "APP_DATABASE_URL": url},
    )

    assert run.returncode == EXIT_CODES["HEALTH_CHECK_FAILED"], run.output
    details = "Database connection refused at 127.0.0.1:1"
    assert run.json["error"] == f"Cannot connect to the production database: {details}"
    assert run.json["result"] == {"health_check": "skipped", "details": details}
    assert run.json["recovery"]["suggestions"][0] == "Verify database is running"
    assert_no_canary(run, project)


@pytest.mark.parametrize(
    ("config_text", "environment", "env", "message"),
    [
        ("{not json", "production", {}, "Malformed configuration"),
        ('{"database": {"environments": {"production": {"protectd": true}}}}', "production", {}, "protectd"),
        ('{"database": {"migration_tool": "prisma", "environments": {}}}', "qa", {}, "Unknown environment: qa"),
        ('{"database": {"environments": {}}}', "production", {}, "migration_tool is required"),
        (
            '{"database": {"migration_tool": "prisma", '
            '"environments": {"production": {"database_url_env": "NOPE_URL"}}}}',
            "production",
            {},
            "Environment variable NOPE_URL is not set",
        ),
        (
            '{"database": {"migration_tool": "flyway", "environments": {"production": {"database_url_env": "U"}}}}',
            "production",
            {"U": "postgresql://x@127.0.0.1:1/x"},
            "'flyway'",
        ),
    ],
)
def test_bad_input_is_a_structured_error_with_exit_code_2(tmp_path, run_faber, config_text, environment, env, message):
    config = tmp_path / ".fractary/plugins/faber-db/config.json"
    config.parent.mkdir(parents=True)
    config.write_text(config_text)

    run = run_faber("migrate", environment, "--json", "--cwd", str(tmp_path), env={**SQLFILES, **env})

    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.output
    assert run.json["code"] == "CONFIG_INVALID" and message in run.json["error"]
    assert "Traceback" not in run.stderr


def test_missing_config_suggests_init(tmp_path, run_faber):
    run = run_faber("status", "dev", "--cwd", str(tmp_path))

    assert run.returncode == 2
    assert "faber init" in run.stdout and "Traceback" not in run.output


def test_config_schema_is_json_schema(run_faber):
    run = run_faber("config", "schema")

    schema = json.loads(run.stdout)
    assert "database" in schema["properties"]
    assert "EnvironmentSettings" in schema["$defs"]


def test_backup_backups_and_rollback(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS})
    base = ["--json", "--cwd", str(project)]
    created = run_faber("backup", "production", "--reason", "before release", *base, env=env)
    assert created.returncode == 0, created.output
    run_faber("migrate", "production", "--yes", *base, env=env)

    listed = run_faber("backups", "production", *base, env=env).json["result"]["backups"]
    refused = run_faber("rollback", "production", "--to", created.json["result"]["id"], *base, env=env)
    restored = run_faber("rollback", "production", "--to", created.json["result"]["id"], "--yes", *base, env=env)

    assert [b["reason"] for b in listed] == ["pre-migration backup", "before release"]
    assert refused.returncode == EXIT_CODES["APPROVAL_REQUIRED"]
    assert restored.returncode == 0, restored.output
    status = run_faber("status", "production", *base, env=env).json["result"]
    assert status["applied"] == [] and status["pending"] == ["001_users"]


def test_health_command_reports_each_check(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS})

    run = run_faber("health", "production", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 0, run.output
    checks = {c["name"]: c["status"] for c in run.json["result"]["checks"]}
    assert checks == {"connectivity": "passed", "schema": "passed", "migrations": "passed"}


def test_plugins_lists_builtin_and_loaded_plugins(run_faber):
    run = run_faber("plugins", "--json", env=SQLFILES)

    document = run.json
    assert document["status"] == "success" and document["operation"] == "list-plugins"
    report = document["result"]
    assert "sqlfiles" in report["migration_tools"] and "pg_dump" in report["backup_providers"]
    assert any("faber_health_checks" in p["hooks"] for p in report["plugins"])


def test_concurrent_run_fails_with_the_lock_exit_code(cli_project, run_faber, database_url):
    import psycopg

    from faber_core.context import Database
    from faber_core.postgres.locks import faber_lock_key
    from faber_core.secrets import Secret

    project, env = cli_project({"001_users": USERS})
    key = faber_lock_key(Database(Secret(database_url), source="test").name)
    with psycopg.connect(database_url, autocommit=True, application_name="faber migrate production") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
        run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
        pid = holder.info.backend_pid

    assert run.returncode == EXIT_CODES["LOCKED"], run.output
    assert f"server pid {pid}" in run.json["error"]


def test_skip_backup_and_skip_health_check(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS})

    run = run_faber(
        "migrate",
        "production",
        "--yes",
        "--skip-backup",
        "--skip-health-check",
        "--json",
        "--cwd",
        str(project),
        env=env,
    )

    assert run.returncode == 0, run.output
    result = run.json["result"]
    assert result["backup_id"] is None
    assert result["health_check_before"] == "skipped" and result["health_check_after"] == "skipped"
    assert "Backup skipped (--skip-backup)" in run.stderr
    assert not (project / ".faber/backups").exists()


def run_in_terminal(args: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run faber with a pseudo-terminal on stdin, answer its prompt, return (exit code, terminal text)."""
    import os
    import pty
    import subprocess
    import sys
    import time

    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "faber_core", *args],
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**os.environ, **env},
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        seen += os.read(primary, 1024)
    os.write(primary, answer.encode() + b"\n")
    stdout, _ = proc.communicate(timeout=120)
    os.close(primary)
    return proc.returncode, seen.decode(errors="replace") + stdout.decode()


@pytest.mark.parametrize(
    ("answer", "exit_code", "applied"), [("y", 0, ["001_users"]), ("n", 5, []), ("\x04", 5, [])], ids=["y", "n", "eof"]
)
def test_terminal_prompt_asks_before_applying(cli_project, run_faber, answer, exit_code, applied):
    project, env = cli_project({"001_users": USERS})

    code, text = run_in_terminal(["migrate", "production", "--cwd", str(project)], env, answer)

    assert "Apply 1 migration(s) to production? [y/N]" in text
    assert code == exit_code, text
    assert (
        run_faber("status", "production", "--json", "--cwd", str(project), env=env).json["result"]["applied"] == applied
    )


def test_every_command_takes_json_and_cwd_and_answers_with_the_envelope(cli_project, run_faber, tmp_path):
    project, env = cli_project({"001_users": USERS})
    base = ["--json", "--cwd", str(project)]
    commands = [
        (["migrate", "production", "--yes"], "deploy-migrations"),
        (["migrate", "production", "--dry-run"], "preview-migrations"),
        (["status", "production"], "migration-status"),
        (["health", "production"], "health-check"),
        (["backup", "production"], "create-backup"),
        (["backups", "production"], "list-backups"),
        (["backups", "prune", "production", "--dry-run"], "prune-backups"),
        (["history", "production"], "deployment-history"),
        (["rollback", "production", "--yes"], "rollback"),
        (["resolve", "production", "--rolled-back", "001_users"], "resolve-migration"),
        (["plugins"], "list-plugins"),
        (["config", "schema"], "config-schema"),
    ]
    for args, operation in commands:
        run = run_faber(*args, *base, env=env)
        document = run.json  # exactly one JSON document, or this raises
        assert document["operation"] == operation, run.output
        assert set(document) >= {"status", "operation", "environment", "result"}, document
        if operation != "resolve-migration":  # nothing failed, so there is nothing to resolve: an error document
            assert document["status"] == "success" and run.returncode == 0, run.output
    plugins = run_faber("plugins", *base, env=env).json["result"]["project"]
    assert plugins == {
        "directory": str(project.resolve()),
        "migration_tool": "sqlfiles",
        "migration_tool_installed": True,
        "backup_providers": {"pg_dump": True},
    }
    created = run_faber("init", "--json", "--cwd", str(tmp_path / "new"))
    assert created.returncode == 0 and created.json["result"]["written"][0].endswith("config.json")


@pytest.mark.parametrize(
    ("args", "operation", "message"),
    [
        (["migrate", "--json"], "deploy-migrations", "Missing argument 'ENVIRONMENT'"),
        (["migrate", "production", "--dry-run", "--jsn", "--json"], "preview-migrations", "No such option: --jsn"),
        (["history", "production", "--limit", "zero", "--json"], "deployment-history", "Invalid value for '--limit'"),
        # Beyond PostgreSQL's bigint LIMIT, which failed as an INTERNAL_ERROR once it reached the database.
        (["history", "production", "--limit", "9" * 20, "--json"], "deployment-history", "less than or equal to"),
        (["status", "--json", "production", "extra"], "migration-status", "unexpected extra argument"),
        (["config", "schema", "--json", "--nope"], "config-schema", "No such option: --nope"),
        (["rollback", "--json", "production", "--to"], "rollback", "requires an argument"),
        (["migrat", "production", "--json"], "usage", "No such command 'migrat'"),
        (["backups", "prune", "--json"], "prune-backups", "Missing argument 'ENVIRONMENT'"),
        (["backup", "production", "--reason", "x" * 501, "--json"], "create-backup", "at most 500 characters"),
        # Taken before the command, --json would leave the command printing no JSON.
        (["--json", "status", "production"], "migration-status", "put it after the command"),
    ],
)
def test_usage_errors_with_json_are_one_error_document(run_faber, args, operation, message):
    run = run_faber(*args)

    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.output
    document = run.json
    assert document["status"] == "error" and document["code"] == "CONFIG_INVALID"
    assert document["operation"] == operation and message in document["error"], document
    assert document["recovery"]["suggestions"][0].startswith("See the usage: faber")
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("args", [["--version", "--json"], ["--json", "--version"]])
def test_version_with_json_is_the_envelope_and_stays_plain_without(run_faber, args):
    from faber_core import __version__

    run = run_faber(*args)
    plain = run_faber("--version")

    assert run.returncode == 0, run.output
    assert run.json == {
        "status": "success",
        "operation": "version",
        "environment": None,
        "result": {"version": __version__},
        "message": f"faber {__version__}",
    }
    assert plain.returncode == 0 and plain.stdout == f"faber {__version__}\n"


def test_usage_errors_without_json_stay_human(run_faber):
    run = run_faber("migrate", "production", "--jsn")

    assert run.returncode == 2 and run.stdout == ""
    assert "No such option: --jsn" in run.stderr


def test_help_shows_no_bool_types_or_braces():
    from typer.testing import CliRunner

    from faber_core.cli import app

    commands = [["migrate"], ["status"], ["health"], ["backup"], ["backups", "list"], ["backups", "prune"]]
    commands += [["rollback"], ["resolve"], ["history"], ["plugins"], ["init"], ["config", "schema"], ["request"]]
    for args in [*commands, [], ["backups"], ["config"]]:
        text = CliRunner().invoke(app, [*args, "--help"], terminal_width=200).output
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        assert "<bool>" not in text and "{" not in usage, text
        if args in commands:
            assert "--json" in text and "--cwd" in text, text
        if args and args[0] not in ("plugins", "init", "config", "request") and args in commands:
            assert f"Usage: faber {' '.join(args)} [OPTIONS] ENVIRONMENT" in text, text


def test_config_is_found_from_a_subdirectory_and_cwd_still_wins(cli_project, run_faber, tmp_path):
    project, env = cli_project({"001_users": USERS})
    subdirectory = project / "migrations"

    found = run_faber("status", "production", "--json", env=env, cwd=subdirectory)
    other = tmp_path / "other"
    other.mkdir()
    given = run_faber("status", "production", "--json", "--cwd", str(other), env=env, cwd=subdirectory)
    from_env = run_faber("status", "production", "--json", env={**env, "FABER_DB_CWD": str(other)}, cwd=subdirectory)

    assert found.returncode == 0, found.output
    assert found.json["result"]["pending"] == ["001_users"]
    for run in (given, from_env):
        assert run.returncode == 2 and str(other / ".fractary") in run.json["error"], run.output


def test_config_search_stops_at_a_repository_root(cli_project, run_faber):
    project, env = cli_project({"001_users": USERS})
    repository = project / "vendor" / "lib"
    (repository / ".git").mkdir(parents=True)
    (repository / "src").mkdir()

    run = run_faber("status", "production", "--json", env=env, cwd=repository / "src")

    assert run.returncode == 2, run.output
    assert run.json["error"] == (
        f"No faber configuration (.fractary/plugins/faber-db/config.json) found in {repository / 'src'} "
        f"or any parent directory up to {repository}"
    )
    assert "faber init" in run.json["recovery"]["suggestions"][0]


def test_a_project_directory_that_is_a_file_or_a_config_that_is_a_directory_is_named_as_such(
    cli_project, run_faber, tmp_path
):
    project, env = cli_project({"001_users": USERS})
    (tmp_path / "notes.txt").write_text("not a project")
    config = project / ".fractary/plugins/faber-db/config.json"
    config.unlink()
    config.mkdir()

    for command in (["status", "production"], ["init"]):
        on_a_file = run_faber(*command, "--json", "--cwd", str(tmp_path / "notes.txt"), env=env)
        assert on_a_file.returncode == 2, on_a_file.output
        assert on_a_file.json["error"] == f"Project directory {tmp_path / 'notes.txt'} is a file, not a directory"
    given = run_faber("status", "production", "--json", "--cwd", str(project), env=env)
    found = run_faber("status", "production", "--json", env=env, cwd=project / "migrations")
    forced = run_faber("init", "--force", "--json", "--cwd", str(project), env=env)

    for run in (given, found):
        assert run.returncode == 2, run.output
        assert run.json["error"] == f"The configuration {config} is a directory, not a file"
    assert forced.returncode == 2, forced.output
    assert forced.json["error"] == ".fractary/plugins/faber-db/config.json is a directory, not a file"
    assert config.is_dir()


def test_init_below_a_file_is_a_config_error_that_says_why(run_faber, tmp_path):
    (tmp_path / "notes.txt").write_text("not a project")

    run = run_faber("init", "--json", "--cwd", str(tmp_path / "notes.txt" / "demo"))

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID"
    below_a_file = tmp_path / "notes.txt" / "demo"
    assert run.json["error"] == f"Cannot write the starter project into {below_a_file}: Not a directory"
    assert (tmp_path / "notes.txt").read_text() == "not a project"


def test_init_stopped_before_its_starter_files_are_written_leaves_no_config_and_runs_again_without_force(
    run_faber, tmp_path
):
    """faber's config is written last: an init stopped half-way (here a file where the starter
    migrations' folder goes) leaves none, so the project is not taken for an initialised one
    without its starter files, and init runs again once the way is clear."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "migrations").write_text("in the way")

    stopped = run_faber("init", "--tool", "sequelize", "--json", "--cwd", str(project))

    assert stopped.returncode == 2, stopped.output
    assert stopped.json["error"].startswith(f"Cannot write the starter project into {project}:")
    assert not (project / ".fractary/plugins/faber-db/config.json").exists()
    (project / "migrations").unlink()
    again = run_faber("init", "--tool", "sequelize", "--json", "--cwd", str(project))
    assert again.returncode == 0, again.output
    assert [path.name for path in (project / "migrations").iterdir()][0].endswith("-create-example-items.js")
    assert (
        json.loads((project / ".fractary/plugins/faber-db/config.json").read_text())["database"]["migration_tool"]
        == "sequelize"
    )


def _password_rejecting_server() -> socket.socket:
    """A server speaking just enough of PostgreSQL's protocol to ask for a password and reject it."""

    def receive(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ConnectionError):
                while True:  # SSL and GSS encryption requests: refused, then the startup message
                    length, code = struct.unpack("!ii", receive(conn, 8))
                    receive(conn, length - 8)
                    if code not in (80877103, 80877104):
                        break
                    conn.sendall(b"N")
                conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
                _, length = struct.unpack("!ci", receive(conn, 5))
                receive(conn, length - 4)
                fields = b'SFATAL\0C28P01\0Mpassword authentication failed for user "app"\0\0'
                conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    threading.Thread(target=serve, daemon=True).start()
    return server


@pytest.mark.parametrize("case", ["refused", "no database", "no user", "password rejected", "silent server"])
def test_connection_errors_say_where_and_as_whom_never_the_password(faber_project, run_faber, database_url, case):
    from urllib.parse import urlsplit

    server = urlsplit(database_url)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)  # accepts the TCP handshake, never answers: a server that hangs
    rejecting = _password_rejecting_server()
    port_of = {"silent server": silent.getsockname()[1], "password rejected": rejecting.getsockname()[1]}
    where, database, user = {
        "refused": ("127.0.0.1:1", "app", "app"),
        "no database": (f"127.0.0.1:{server.port}", "no_such_db", "postgres"),
        "no user": (f"127.0.0.1:{server.port}", "postgres", "no_such_user"),
    }.get(case, (f"127.0.0.1:{port_of.get(case)}", "app", "app"))
    url = f"postgresql://{user}:{CANARY_PASSWORD}@{where}/{database}"
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL", "connect_timeout_seconds": 2}},
            }
        }
    )
    expected = {
        "refused": f"Database connection refused at {where}",
        "no database": f'Database "no_such_db" does not exist on {where}',
        "no user": f'Database user "no_such_user" does not exist on {where}',
        "password rejected": f'Database authentication failed for user "app" at {where}',
        "silent server": f"Database connection to {where} timed out after 2s (connect_timeout_seconds",
    }[case]

    try:
        run = run_faber(
            "status", "production", "--json", "--cwd", str(project), env={**SQLFILES, "APP_DATABASE_URL": url}
        )
    finally:
        silent.close()
        rejecting.close()

    assert run.returncode == EXIT_CODES["HEALTH_CHECK_FAILED"], run.output
    assert run.json["error"].startswith("Cannot connect to the production database: " + expected), run.json
    assert f"… Connecting to {database} as {user}" in run.stderr
    assert "Retry when issue resolved: faber status production" in run.json["recovery"]["suggestions"]
    assert_no_canary(run, project)


@pytest.mark.parametrize("kind", ["fifo", "symlink_to_a_file", "symlink_to_dev_null"])
def test_init_force_replaces_a_config_that_is_no_regular_file_instead_of_writing_through_it(run_faber, tmp_path, kind):
    # Writing into the entry: a FIFO blocks until someone reads it (forever, in CI), /dev/null
    # swallows the config while init reports it written, and a symlink's target outside the
    # project would be overwritten. --force replaces the entry itself.
    project = tmp_path / "project"
    config = project / ".fractary/plugins/faber-db/config.json"
    config.parent.mkdir(parents=True)
    shared = tmp_path / "shared-config.json"
    shared.write_text('{"kept": true}\n')
    if kind == "fifo":
        os.mkfifo(config)
    else:
        config.symlink_to(shared if kind == "symlink_to_a_file" else Path(os.devnull))

    run = run_faber("init", "--force", "--tool", "prisma", "--json", "--cwd", str(project), timeout=60)

    assert run.returncode == 0, run.output
    assert not config.is_symlink() and config.is_file()
    assert json.loads(config.read_text())["database"]["migration_tool"] == "prisma"
    assert shared.read_text() == '{"kept": true}\n'
    assert run_faber("config", "schema", "--json", "--cwd", str(project)).returncode == 0


def test_init_replaces_a_state_gitignore_that_is_a_fifo_without_waiting_on_it(run_faber, tmp_path):
    project = tmp_path / "project"
    (project / ".faber").mkdir(parents=True)
    os.mkfifo(project / ".faber/.gitignore")

    run = run_faber("init", "--tool", "prisma", "--json", "--cwd", str(project), timeout=60)

    assert run.returncode == 0, run.output
    assert (project / ".faber/.gitignore").read_text() == "*\n"


def test_an_index_a_concurrent_build_is_still_making_is_not_named_as_left_behind(database_url):
    """A CREATE INDEX CONCURRENTLY still running (a DBA's, or a killed run's whose session the server
    has not ended yet) has its index invalid until it ends: advice to drop it would end that build."""
    import threading

    import psycopg

    from faber_core.postgres.health import invalid_indexes
    from faber_core.testing.fixtures import wait_for

    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE votes (voter int)")
    with psycopg.connect(database_url) as writer, psycopg.connect(database_url, autocommit=True) as reader:
        writer.execute("INSERT INTO votes VALUES (1)")  # a writer's transaction the build waits for

        def build() -> None:
            with psycopg.connect(database_url, autocommit=True) as builder:
                builder.execute("CREATE INDEX CONCURRENTLY votes_voter ON votes (voter)")

        builder = threading.Thread(target=build)
        builder.start()
        try:
            wait_for(
                lambda: reader.execute(
                    "SELECT 1 FROM pg_stat_progress_create_index WHERE index_relid = to_regclass('votes_voter')"
                ).fetchone(),
                "the build to wait for the writer",
            )
            building = invalid_indexes(reader)
        finally:
            writer.rollback()
            builder.join(30)
        assert invalid_indexes(reader) == []
    assert building == [], building
