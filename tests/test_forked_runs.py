"""The test kit's forked faber runs (faber_core.testing.forked) are what a new interpreter would do:
the same exit code and output, their own process, session, environment and working directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from faber_core.testing.fixtures import CANARY_PASSWORD, faber_command, wait_for
from faber_core.testing.forked import can_fork_with, start_forked

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}


def new_interpreter(*args: str, env: dict[str, str], cwd: Path, input: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "faber_core", *args],
        cwd=cwd,
        env={**os.environ, **env},
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, env, input",
    [
        (["--help"], {}, ""),
        (["migrate", "production", "--no-such-option"], {}, ""),
        (["status", "production", "--json"], {}, ""),
        (["status", "production", "--json", "--cwd", "no/such/folder"], {}, ""),
        (["request"], {}, '{"command": "migrate", "environment": '),
        (["request"], {"APP_URL": f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:1:2/app"}, '{"command": "status"}'),
    ],
    ids=["help", "usage-error", "no-config", "no-folder", "half-a-request", "malformed-url"],
)
def test_a_forked_run_answers_as_a_new_interpreter_does(tmp_path, args, env, input):
    forked = faber_command(*args, env=env, cwd=tmp_path, input=input)
    new = new_interpreter(*args, env=env, cwd=tmp_path, input=input)

    assert (forked.returncode, forked.stdout, forked.stderr) == (new.returncode, new.stdout, new.stderr)
    assert forked.returncode != 0 or args == ["--help"]


def test_a_forked_run_reads_its_own_environment_and_folder(faber_project, database_url, tmp_path):
    """The project is found from the run's folder and its URL in the run's environment, neither of
    which the test process has; the next run, without them, has neither either."""
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"dev": {"database_url_env": "RUN_ONLY_URL"}}}},
        {"migrations/001_t.sql": "CREATE TABLE t (id int);"},
    )
    assert "RUN_ONLY_URL" not in os.environ

    deployed = faber_command("migrate", "dev", "--json", cwd=project, env={**SQLFILES, "RUN_ONLY_URL": database_url})
    without = faber_command("status", "dev", "--json", cwd=project, env=SQLFILES)

    assert deployed.returncode == 0, deployed.output
    assert deployed.json["result"]["migrations_applied"] == 1
    assert without.returncode != 0 and "RUN_ONLY_URL" in without.output
    assert os.getcwd() != str(project)


def test_a_forked_run_is_a_process_of_its_own_that_a_signal_ends(tmp_path):
    """Started in a session of its own (as the fault tests start faber), it is that session's
    leader; SIGKILL ends it as it ends any process."""
    stdout, stderr, request = tmp_path / "out", tmp_path / "err", tmp_path / "request"
    stdout.touch()
    stderr.touch()
    os.mkfifo(request)
    sender = os.open(request, os.O_RDWR)  # a request sent by no one: the run waits for it until killed
    try:
        run = start_forked(
            ["request"],
            cwd=tmp_path,
            environ=dict(os.environ),
            stdin=request,
            stdout=stdout,
            stderr=stderr,
            new_session=True,
        )
        wait_for(lambda: os.readlink(f"/proc/{run.pid}/fd/0") == str(request), "the run to read its request")

        assert run.pid != os.getpid() and os.getsid(run.pid) == run.pid
        assert run.poll() is None
        run.kill()
        assert run.wait(60) == -signal.SIGKILL
    finally:
        os.close(sender)


def test_an_environment_that_changes_how_python_starts_gets_a_new_interpreter(tmp_path):
    """A sitecustomize on a PYTHONPATH of the run's own runs as the interpreter starts, which a
    fork of a started one would skip."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.stderr.write('started with sitecustomize\\n')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    run = faber_command("--help", env=env, cwd=tmp_path)

    assert not can_fork_with({**os.environ, **env})
    assert can_fork_with(dict(os.environ))
    assert run.returncode == 0 and "started with sitecustomize" in run.stderr
    assert "migrate" in run.stdout  # and the help
