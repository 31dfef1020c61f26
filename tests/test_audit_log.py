"""The JSON-lines audit log: every event of every run, one line each, appended."""

from __future__ import annotations

import json

from faber_core.models import AuditEvent

USERS = "CREATE TABLE users (id serial PRIMARY KEY);"


def events(project) -> list[AuditEvent]:
    lines = (project / ".faber/audit.log").read_text().splitlines()
    return [AuditEvent.model_validate_json(line) for line in lines]


def test_every_event_of_every_run_is_one_appended_line(faber_project, database_url, run_faber):
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": database_url}

    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    after_deploy = (project / ".faber/audit.log").read_bytes()
    status = run_faber("status", "production", "--cwd", str(project), env=env)

    assert deploy.returncode == 0 and status.returncode == 0
    assert (project / ".faber/audit.log").read_bytes().startswith(after_deploy)
    logged = events(project)
    runs = list(dict.fromkeys(e.run_id for e in logged))
    assert len(runs) == 2
    first = [e for e in logged if e.run_id == runs[0]]
    kinds = [e.kind for e in first]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    assert {
        "step.started",
        "step.finished",
        "lock.acquired",
        "approval.granted",
        "backup.created",
        "apply.started",
        "migration.started",
        "migration.applied",
        "verify.passed",
    } <= set(kinds)
    assert all(e.environment == "production" and e.operation == "deploy-migrations" for e in first)
    finished = first[-1].data
    assert finished["exit_code"] == 0 and finished["document"] == deploy.json
    applied = next(e for e in first if e.kind == "migration.applied")
    assert applied.data["name"] == "001_users" and applied.data["duration_seconds"] >= 0
    assert [e.kind for e in logged if e.run_id == runs[1]][-1] == "run.finished"
    assert all(json.loads(line) for line in (project / ".faber/audit.log").read_text().splitlines())


def test_an_unwritable_log_is_a_warning_not_a_failure(faber_project, database_url, run_faber):
    project = faber_project(
        {
            "database": {
                "migration_tool": "sqlfiles",
                "environments": {"production": {"database_url_env": "APP_DATABASE_URL"}},
            }
        },
        {"migrations/001_users.sql": USERS},
    )
    (project / ".faber/audit.log").mkdir(parents=True)

    run = run_faber(
        "status",
        "production",
        "--json",
        "--cwd",
        str(project),
        env={"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_DATABASE_URL": database_url},
    )

    assert run.returncode == 0 and run.json["status"] == "success"
    assert run.stderr.count("warning: cannot append to") == 1
