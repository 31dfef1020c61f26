"""An interrupt while the ``faber`` command starts (its imports take a few hundred milliseconds)
ends it the way every interrupt does: an ``INTERRUPTED`` document, exit 130, nothing done, and no
``KeyboardInterrupt`` traceback (faber_core/command.py).

The signal is sent at a moment the test waits for: the command's entry point runs with an import
hook that, as the CLI module starts to load, says so on a pipe and pauses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ENVIRONMENT = "production"
URL_ENV = "START_DATABASE_URL"
CANARY = "canary-Start-7Qz"

# The real entry point, with an import hook that pauses as a module (PAUSE_AT) starts to load.
ENTRY_PAUSED_IN_IMPORTS = """\
import os, sys, time
import importlib.abc

class PauseAtCli(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["PAUSE_AT"]:
            sys.meta_path.remove(self)
            os.write(int(os.environ["PAUSE_FD"]), b"importing\\n")
            time.sleep(2)  # a signal handler that holds the interrupt lets the sleep go on
        return None

sys.meta_path.insert(0, PauseAtCli())
sys.argv = ["faber", *sys.argv[1:]]
from faber_core.command import main
main()
"""


@pytest.fixture
def project(faber_project, database_url):
    """A sqlfiles project with one migration deployed and one pending."""
    config = {"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: {"database_url_env": URL_ENV}}}}
    return faber_project(
        config,
        {
            "migrations/001_base.sql": "CREATE TABLE accounts (id int);",
            "migrations/002_next.sql": "CREATE TABLE t (id int);",
        },
    )


def with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':')[0]}:{CANARY}@{host}"


def interrupted_while_starting(
    project: Path, url: str, signum: int, *args: str, pause_at: str = "faber_core.cli"
) -> subprocess.CompletedProcess:
    """Run faber ARGS, send ``signum`` while it imports ``pause_at`` (its CLI), return how it ended."""
    read_end, write_end = os.pipe()
    env = {
        **os.environ,
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
        URL_ENV: with_password(url),
        "PAUSE_FD": str(write_end),
        "PAUSE_AT": pause_at,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY_PAUSED_IN_IMPORTS, *args, "--cwd", str(project)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pause:
        assert pause.readline() == b"importing\n", f"faber did not import {pause_at}"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()
    return ["002_next"] if found and found[0] else []


def deploy_base(project: Path, url: str) -> None:
    env = {**os.environ, "FABER_PLUGINS": "faber_core.testing.sqlfiles", URL_ENV: url}
    pending = project / "migrations/002_next.sql"
    held_back = pending.read_text()
    pending.unlink()
    done = subprocess.run(
        [sys.executable, "-m", "faber_core", "migrate", ENVIRONMENT, "--yes", "--skip-backup", "--cwd", str(project)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pending.write_text(held_back)


# pluggy: the first library faber imports (for its plugins' marker); it must come after the hold.
@pytest.mark.parametrize("pause_at", ["faber_core.cli", "pluggy"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_deploy_interrupted_while_faber_starts_reports_interrupted_and_applies_nothing(
    project, database_url, signum, pause_at
):
    deploy_base(project, database_url)
    done = interrupted_while_starting(
        project, database_url, signum, "migrate", ENVIRONMENT, "--yes", "--json", pause_at=pause_at
    )
    assert done.returncode == 130, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    document = json.loads(done.stdout)
    assert document["code"] == "INTERRUPTED"
    assert document["result"]["interrupted_by"] == signal.Signals(signum).name
    # Said, so that no one goes looking for what a run that never began may have changed.
    assert document["error"] == f"Interrupted by {signal.Signals(signum).name} as faber started: nothing was done"
    assert applied(database_url) == []
    assert not (project / ".faber/backups").exists() or not any((project / ".faber/backups").iterdir())
    assert CANARY not in done.stdout + done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_command_line_that_runs_nothing_still_ends_as_interrupted(project, database_url, signum):
    done = interrupted_while_starting(project, database_url, signum, "--help")
    assert done.returncode == 130, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"Interrupted by {signal.Signals(signum).name} before faber started: nothing was done" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_run_interrupted_while_it_checks_its_config_says_nothing_was_done(project, database_url, signum, monkeypatch):
    """A signal once faber started, while its run reads the config and checks that every plugin it
    names is installed (this process sends it to itself then): found by a kill sweep of `faber
    rollback`, this ended with a bare "Interrupted by SIGINT" and "check the state", as if a
    restore may have run."""
    from faber_core import api
    from faber_core.plugins import Plugins

    check_config = Plugins.check_config

    def checked_as_a_signal_lands(self, context):
        os.kill(os.getpid(), signum)  # handled at once, in this thread
        return check_config(self, context)

    monkeypatch.setattr(Plugins, "check_config", checked_as_a_signal_lands)
    monkeypatch.setenv("FABER_PLUGINS", "faber_core.testing.sqlfiles")
    monkeypatch.setenv(URL_ENV, with_password(database_url))
    ended = api.deploy(ENVIRONMENT, yes=True, working_directory=project)
    document = ended.model_dump(mode="json")

    assert (ended.exit_code, document["code"]) == (130, "INTERRUPTED"), document
    name = signal.Signals(signum).name
    assert document["error"] == f"Interrupted by {name} before the run began: nothing was done", document
    assert applied(database_url) == []
    assert CANARY not in json.dumps(document)
