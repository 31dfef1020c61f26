"""``faber request`` and ``faber_core.api``: the spec's request documents in, the spec's results out."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import faber_core.plugins
from faber_core import api
from faber_core.errors import EXIT_CODES
from faber_core.results import DeployResult, PreviewResult
from faber_core.testing import sqlfiles
from faber_core.testing.fixtures import CANARY_PASSWORD, wait_for

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
PROFILES = "CREATE TABLE user_profiles (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, bio text);"
POSTS = "CREATE TABLE posts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text);"
BROKEN = "ALTER TABLE posts ADD COLUMN title text;"  # duplicate column name

# The shapes of the spec's example results: every key it shows, recursively.
SPEC_SUCCESS = {
    "status": "success",
    "operation": "deploy-migrations",
    "environment": "production",
    "result": {
        "migrations_applied": 2,
        "migrations": [{"name": str, "status": "applied", "duration_seconds": float}],
        "total_duration_seconds": float,
        "backup_id": str,
        "health_check_before": "passed",
        "health_check_after": "passed",
    },
    "message": "Successfully applied 2 migrations to production",
}
SPEC_PREVIEW = {
    "status": "success",
    "operation": "preview-migrations",
    "environment": "production",
    "result": {
        "pending_migrations": 2,
        "migrations": [{"name": str, "sql": str, "estimated_duration_seconds": float}],
        "total_estimated_duration_seconds": float,
    },
    "message": "Preview only - no changes applied",
}
SPEC_NO_PENDING = {
    "status": "success",
    "operation": "deploy-migrations",
    "result": {"migrations_applied": 0, "message": "No pending migrations"},
}
SPEC_MIGRATION_FAILED = {
    "status": "error",
    "operation": "deploy-migrations",
    "environment": "production",
    "error": str,
    "result": {
        "failed_migration": "20250124150000_add_posts_again",
        "backup_id": str,
        "migrations_applied_before_failure": 0,
        "rollback_initiated": bool,
        "rollback_status": str,
    },
    "recovery": {"backup_id": str, "suggestions": [str]},
}
SPEC_HEALTH_FAILED = {
    "status": "error",
    "error": "Pre-deployment health check failed",
    "result": {"health_check": "failed", "details": str},
    "recovery": {"suggestions": [str]},
}


def assert_shape(document, shape, where="document"):
    """Every key of ``shape`` is in ``document``; a type means any value of it, anything else that value."""
    if isinstance(shape, dict):
        assert isinstance(document, dict), f"{where}: {document!r}"
        for key, expected in shape.items():
            assert key in document, f"{where}.{key} missing from {sorted(document)}"
            assert_shape(document[key], expected, f"{where}.{key}")
    elif isinstance(shape, list):
        assert isinstance(document, list) and document, f"{where}: {document!r}"
        for item in document:
            assert_shape(item, shape[0], f"{where}[]")
    elif isinstance(shape, type):
        accepted = (int, float) if shape is float else shape
        is_bool = isinstance(document, bool)
        assert isinstance(document, accepted) and (shape is bool or not is_bool), f"{where}: {document!r}"
    else:
        assert document == shape, f"{where}: {document!r} != {shape!r}"


@pytest.fixture
def project(faber_project, database_url):
    """A project with the spec's example migrations and a protected `production`."""
    environments = {"production": {"database_url_env": "PROD_DATABASE_URL", "lock_wait_seconds": 1}}
    directory = faber_project(
        {"database": {"migration_tool": sqlfiles.TOOL, "environments": environments}},
        {
            "migrations/20250124140000_add_user_profiles.sql": PROFILES,
            "migrations/20250124150000_add_posts.sql": POSTS,
        },
    )
    return directory, {**SQLFILES, "PROD_DATABASE_URL": database_url}


def spec_request(operation: str, working_directory, **parameters) -> str:
    """The spec's example request, with this test's project as the working directory."""
    defaults = {"environment": "production", "dry_run": False, "skip_backup": False, "skip_health_check": False}
    body = {"operation": operation, "parameters": {**defaults, "working_directory": str(working_directory)}}
    body["parameters"].update(parameters)
    return json.dumps(body)


def test_the_spec_example_requests_get_the_spec_shapes(project, run_faber, tmp_path):
    directory, env = project

    preview = run_faber("request", input=spec_request("preview-migrations", directory), env=env)
    deployed = run_faber("request", "--yes", input=spec_request("deploy-migrations", directory), env=env)
    again = run_faber("request", "--yes", input=spec_request("deploy-migrations", directory), env=env)
    (directory / "migrations/20250124150000_add_posts_again.sql").write_text(BROKEN)
    request_file = tmp_path / "request.json"
    request_file.write_text(spec_request("deploy-migrations", directory))
    failed = run_faber("request", str(request_file), "--yes", env=env)

    assert preview.returncode == 0, preview.output
    assert_shape(preview.json, SPEC_PREVIEW)
    assert deployed.returncode == 0, deployed.output
    assert_shape(deployed.json, SPEC_SUCCESS)
    assert [m["name"] for m in deployed.json["result"]["migrations"]] == [
        "20250124140000_add_user_profiles",
        "20250124150000_add_posts",
    ]
    assert "🎯 STARTING: Migration Deployer" in deployed.stderr  # progress on stderr, as for faber migrate
    assert again.returncode == 0 and again.json["result"]["migrations_applied"] == 0
    assert_shape(again.json, SPEC_NO_PENDING)
    assert failed.returncode == EXIT_CODES["MIGRATION_FAILED"], failed.output
    assert_shape(failed.json, SPEC_MIGRATION_FAILED)
    assert failed.json["error"].startswith("Migration 20250124150000_add_posts_again failed")


def test_a_request_needs_approval_like_migrate_and_dry_run_changes_nothing(project, run_faber):
    directory, env = project

    refused = run_faber("request", input=spec_request("deploy-migrations", directory), env=env)
    dry = run_faber("request", input=spec_request("deploy-migrations", directory, dry_run=True), env=env)
    status = run_faber("status", "production", "--json", "--cwd", str(directory), env=env)

    assert refused.returncode == EXIT_CODES["APPROVAL_REQUIRED"], refused.output
    assert refused.json["code"] == "APPROVAL_REQUIRED" and "--yes" in refused.json["recovery"]["suggestions"][0]
    assert dry.returncode == 0 and dry.json["operation"] == "preview-migrations"
    assert status.json["result"]["applied"] == []


def test_an_unreachable_database_gets_the_spec_health_check_error(faber_project, run_faber):
    environments = {"production": {"database_url_env": "PROD_DATABASE_URL", "connect_timeout_seconds": 2}}
    directory = faber_project({"database": {"migration_tool": sqlfiles.TOOL, "environments": environments}})
    url = f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:1/app"

    run = run_faber(
        "request",
        "--yes",
        input=spec_request("deploy-migrations", directory),
        env={**SQLFILES, "PROD_DATABASE_URL": url},
    )

    assert run.returncode == EXIT_CODES["HEALTH_CHECK_FAILED"], run.output
    assert_shape(run.json, SPEC_HEALTH_FAILED)
    assert CANARY_PASSWORD not in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("request_text", "operation", "problem"),
    [
        ("this is not json", "request", "The request is not valid JSON"),
        ("[1, 2]", "request", "(request): Input should be a valid dictionary"),
        ('{"operation": "drop-database", "parameters": {"environment": "production"}}', "request", "operation:"),
        ('{"operation": "deploy-migrations", "parameters": {}}', "deploy-migrations", "parameters.environment"),
        (
            '{"operation": "deploy-migrations", "parameters": {"environment": "production", "dry_run": "no"}}',
            "deploy-migrations",
            "parameters.dry_run: Input should be a valid boolean",
        ),
        (
            '{"operation": "preview-migrations", "parameters": {"environment": "production", "dryrun": true}}',
            "preview-migrations",
            "parameters.dryrun: Extra inputs are not permitted (did you mean dry_run?)",
        ),
        (
            '{"operation": "deploy-migrations", "paramaters": {"environment": "production"}}',
            "deploy-migrations",
            "paramaters: Extra inputs are not permitted (did you mean parameters?)",
        ),
        # past Python's recursion limit; a short id, as the test id goes into the environment of
        # the faber it starts (PYTEST_CURRENT_TEST), where one variable may not exceed 128 KiB
        pytest.param("[" * 100_000 + "]" * 100_000, "request", "nested too deeply", id="nested-100000-deep"),
        # past Python's limit on the digits of an integer it converts
        pytest.param(
            '{"operation": "deploy-migrations", "parameters": {"environment": "production", "dry_run": '
            + "9" * 5000
            + "}}",
            "request",
            "Exceeds the limit (4300 digits) for integer string conversion",
            id="integer-of-5000-digits",
        ),
    ],
)
def test_invalid_requests_are_config_invalid_documents(run_faber, request_text, operation, problem):
    run = run_faber("request", "--yes", input=request_text)

    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.output
    document = run.json
    assert document["status"] == "error" and document["code"] == "CONFIG_INVALID"
    assert document["operation"] == operation and problem in document["error"], document
    assert "Traceback" not in run.stderr


def test_a_request_of_thousands_of_unknown_keys_reports_the_first_ones_and_how_many_more(run_faber):
    """Every problem was described (a spelling suggestion each) in the error and in result.problems:
    a request just under 1 MiB of unknown keys took seconds and answered with 6 MB."""
    parameters = {"environment": "production", **{f"k{number}": 0 for number in range(60_000)}}

    run = run_faber("request", "--yes", input=json.dumps({"operation": "deploy-migrations", "parameters": parameters}))

    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.output[-2000:]
    problems = run.json["result"]["problems"]
    assert len(problems) == 21 and problems[-1] == "and 59980 more problems", problems[-2:]
    assert problems[0] == "parameters.k0: Extra inputs are not permitted"
    assert len(run.stdout) < 10_000


def test_a_request_that_says_a_parameter_twice_is_refused_and_changes_nothing(project, run_faber):
    """JSON parsers disagree on which of two equal keys wins: a request saying both "dry_run": true
    and "dry_run": false must not deploy to production on the strength of the last one."""
    directory, env = project
    twice = spec_request("deploy-migrations", directory, dry_run=True).replace(
        '"dry_run": true', '"dry_run": true, "dry_run": false'
    )

    run = run_faber("request", "--yes", input=twice, env=env)
    status = run_faber("status", "production", "--json", "--cwd", str(directory), env=env)

    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.output
    assert "'dry_run' appears twice" in run.json["error"], run.json
    assert status.json["result"]["applied"] == [] and not (directory / ".faber" / "backups").exists()


@pytest.mark.parametrize(
    ("working_directory", "problem"),
    [
        ("project\\u0000elsewhere", "null byte"),
        ("a" * 5000, "File name too long"),
        ("~no-such-user-here/project", "home directory"),
    ],
    ids=["null-byte", "too-long", "unknown-user-home"],
)
def test_a_working_directory_that_cannot_be_a_path_is_config_invalid(run_faber, working_directory, problem):
    parameters = f'{{"environment": "production", "working_directory": "{working_directory}"}}'

    run = run_faber("request", "--yes", input=f'{{"operation": "deploy-migrations", "parameters": {parameters}}}')

    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.output
    assert run.json["code"] == "CONFIG_INVALID" and problem in run.json["error"], run.json
    assert "Traceback" not in run.stderr


def test_a_request_that_never_ends_is_refused_at_its_size_limit(run_faber):
    """A request is a few hundred bytes: /dev/zero (or `yes |`) must not fill faber's memory."""
    from_a_device = run_faber("request", "--yes", "/dev/zero", timeout=60)
    on_stdin = run_faber("request", "--yes", input=" " * (2 * 1024**2) + "{}")

    for run in (from_a_device, on_stdin):
        assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.output
        assert "larger than 1 MiB" in run.json["error"], run.json


def waiting_for_its_stdin(pid: int) -> bool:
    """Whether the process waits for its stdin to be readable: blocked in pselect6 on fd 0 alone
    (Linux /proc: syscall 270 on x86-64, 72 on arm64; its first argument, 1, the highest fd + 1)."""
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()
    except (FileNotFoundError, PermissionError):
        return False
    return call[:2] in (["270", "0x1"], ["72", "0x1"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_while_the_request_is_awaited_on_an_open_stdin_ends_faber_at_once(tmp_path, signum):
    """An orchestrator that opened faber's stdin and sent half a request (or nothing) stops it:
    faber held the signal until stdin closed, so it waited for ever, then answered CONFIG_INVALID."""
    faber = subprocess.Popen(
        [sys.executable, "-m", "faber_core", "request", "-"],
        cwd=tmp_path,
        # As from a terminal: a runner started under nohup passes SIGHUP on ignored, and faber keeps it so.
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        faber.stdin.write(b'{"operation": "deploy-mig')
        faber.stdin.flush()
        wait_for(lambda: waiting_for_its_stdin(faber.pid), "faber to wait for the rest of the request")
        faber.send_signal(signum)
        returncode = faber.wait(timeout=30)
    finally:
        if faber.poll() is None:
            faber.kill()
        faber.stdin.close()
    document = json.loads(faber.stdout.read())

    assert returncode == EXIT_CODES["INTERRUPTED"], document
    assert document["code"] == "INTERRUPTED" and document["result"] == {"interrupted_by": signum.name}
    assert document["error"] == f"Interrupted by {signum.name} while reading the request: nothing was done"
    assert "Traceback" not in faber.stderr.read().decode()


def test_a_missing_request_file_is_config_invalid(run_faber, tmp_path):
    run = run_faber("request", str(tmp_path / "nope.json"))

    assert run.returncode == 2 and run.json["error"].startswith("Cannot read the request file")


def test_the_python_api_returns_the_result_models(project, plugin_manager, monkeypatch):
    directory, env = project
    plugin_manager.register(sqlfiles, name="sqlfiles")
    monkeypatch.setattr(faber_core.plugins, "get_plugin_manager", lambda: plugin_manager)
    monkeypatch.setenv("PROD_DATABASE_URL", env["PROD_DATABASE_URL"])
    events = []

    preview = api.request(
        {"operation": "preview-migrations", "parameters": {"environment": "production"}}, working_directory=directory
    )
    refused = api.deploy("production", working_directory=directory, approver=lambda question: False)
    deployed = api.deploy(
        "production", working_directory=directory, approver=lambda question: True, listeners=[events.append]
    )

    assert isinstance(preview.result, PreviewResult) and preview.result.pending_migrations == 2
    assert refused.code == "APPROVAL_REQUIRED" and refused.exit_code == 5
    assert isinstance(deployed.result, DeployResult) and deployed.exit_code == 0
    assert deployed.result.migrations_applied == 2 and deployed.result.backup_id
    assert CANARY_PASSWORD not in deployed.model_dump_json()
    kinds = [event.kind for event in events]
    assert kinds[0] == "run.started" and "approval.granted" in kinds and kinds[-1] == "run.finished"


def test_the_python_api_bounds_its_arguments_as_the_cli_does(project, plugin_manager, monkeypatch):
    """From Python as from the command line: a reason longer than a manifest keeps, a prune keeping
    no backup, a history limit beyond what the database takes are refused before anything runs."""
    directory, env = project
    plugin_manager.register(sqlfiles, name="sqlfiles")
    monkeypatch.setattr(faber_core.plugins, "get_plugin_manager", lambda: plugin_manager)
    monkeypatch.setenv("PROD_DATABASE_URL", env["PROD_DATABASE_URL"])
    longest = "x" * api.BACKUP_REASON_MAX
    kept = api.backup("production", reason=longest, working_directory=directory)

    refused = {
        "reason": api.backup("production", reason=longest + "x", working_directory=directory),
        "keep": api.prune_backups("production", keep=0, working_directory=directory),
        "limit": api.history("production", limit=0, working_directory=directory),
        "bigint": api.history("production", limit=2**63, working_directory=directory),
    }

    assert kept.exit_code == 0 and kept.result["reason"] == longest, kept
    for document in refused.values():
        assert (document.code, document.exit_code) == ("CONFIG_INVALID", EXIT_CODES["CONFIG_INVALID"]), document
        assert document.operation in ("create-backup", "prune-backups", "deployment-history")
    assert refused["reason"].error == "Invalid reason: at most 500 characters (got 501)"
    assert refused["keep"].error == "Invalid keep: at least 1 (got 0)"
    assert refused["bigint"].error == f"Invalid limit: from 1 to 100000 (got {2**63})"
    assert refused["limit"].recovery.suggestions == ["Call it again with limit from 1 to 100000"]
    backups = sorted(path.name for path in (directory / ".faber/backups/production").iterdir())
    assert backups == [f"{kept.result['id']}.dump", f"{kept.result['id']}.json"]
