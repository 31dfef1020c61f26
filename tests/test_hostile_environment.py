"""What the process around faber can get wrong: standard streams its caller closed, environment
variables holding bytes that are not UTF-8. Each is refused with a document and its exit code,
never a traceback, the database unchanged, no password shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from faber_core.errors import EXIT_CODES
from faber_core.testing.fixtures import CANARY_PASSWORD

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}


def faber_with_stdin_closed(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m faber_core ARGS`` started with no descriptor 0 at all (``faber ... <&-``, a
    supervisor that closes its children's stdin), which Python shows as ``sys.stdin`` None."""
    return subprocess.run(
        [sys.executable, "-m", "faber_core", *args],
        cwd=cwd,
        env={**os.environ, **SQLFILES},
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.close(0),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["migrate", "production", "--json"], "APPROVAL_REQUIRED"),
        (["rollback", "production", "--json"], "CONFIG_INVALID"),  # no backup yet
        (["request"], "CONFIG_INVALID"),  # an empty request
    ],
    ids=["migrate", "rollback", "request"],
)
def test_a_closed_stdin_is_no_terminal_and_no_request_not_a_traceback(project, database_url, args, code):
    """faber asked the missing stdin whether it was a terminal (AttributeError on None): exit 1,
    a traceback and no document; now it reads as /dev/null: no terminal to approve on, an empty request."""
    project_dir = project({"001_users": "CREATE TABLE users (id int);"})
    if args[0] == "request":
        args = ["request", "--cwd", str(project_dir)]

    run = faber_with_stdin_closed(*args, cwd=project_dir)

    assert "Traceback" not in run.stderr, run.stderr
    document = json.loads(run.stdout)
    assert (run.returncode, document["code"]) == (EXIT_CODES[code], code), document
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('users')").fetchone() == (None,)


@pytest.mark.parametrize("debug", ["0", "1"])
@pytest.mark.parametrize("fleet", [False, True], ids=["database_url_env", "fleet-urls_env"])
def test_a_url_variable_holding_bytes_that_are_not_utf8_is_config_invalid_without_its_password(
    faber_project, debug, fleet
):
    """Python reads such bytes as lone surrogates, on which the mask of the password failed:
    INTERNAL_ERROR ("surrogates not allowed"), exit 1."""
    environment = {"lock_wait_seconds": 1}
    environment |= {"targets": {"urls_env": "APP_URLS"}} if fleet else {"database_url_env": "APP_URLS"}
    config = {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}}
    project_dir = faber_project(config)
    env = {key.encode(): value.encode() for key, value in {**os.environ, **SQLFILES, "FABER_DEBUG": debug}.items()}
    env[b"APP_URLS"] = b"postgresql://app:\xff" + CANARY_PASSWORD.encode() + b"@127.0.0.1:1/app"

    run = subprocess.run(
        [sys.executable, "-m", "faber_core", "migrate", "production", "--yes", "--json"],
        cwd=project_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )

    output = (run.stdout + run.stderr).decode(errors="replace")
    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], output
    document = json.loads(run.stdout)
    assert document["error"] == "Environment variable APP_URLS is not UTF-8 text: refused", document
    assert CANARY_PASSWORD not in output and "Traceback" not in output


def test_a_project_directory_that_is_a_symbolic_link_loop_is_named_as_given(run_faber, tmp_path):
    """Given as --cwd, it was named as Python's repr of a path: "Project directory PosixPath('...')"."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)

    run = run_faber("status", "production", "--json", "--cwd", str(loop))

    assert run.returncode == EXIT_CODES["CONFIG_INVALID"], run.output
    assert run.json["error"] == f"Project directory '{loop}' cannot be used: Symlink loop from '{loop}'"
