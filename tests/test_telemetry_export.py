"""Exporting for real: the ``faber`` CLI sends its spans over OTLP/HTTP when the standard
``OTEL_*`` variables say so, and configures nothing (and imports no SDK) when they do not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from faber_core.telemetry import requested_exporters
from faber_core.testing.fixtures import CANARY_PASSWORD
from faber_core.testing.otlp import OtlpReceiver

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
ERROR = 2  # OTLP's STATUS_CODE_ERROR


@pytest.fixture
def otlp_receiver():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def cli_project(faber_project, database_url):
    environment = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id int);"},
    )
    return project, {**SQLFILES, "APP_DATABASE_URL": database_url}


def test_cli_exports_its_spans_over_otlp_http(cli_project, run_faber, otlp_receiver):
    project, env = cli_project
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci",
    }

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env={**env, **otel})

    assert run.returncode == 0, run.output
    spans = otlp_receiver.spans()
    names = [s.name for s in spans]
    assert names.count("faber.migrate") == 1 and names.count("faber.migration") == 1
    assert {"faber.step.lock", "faber.step.backup", "faber.step.apply"} <= set(names)
    root = next(s for s in spans if s.name == "faber.migrate")
    assert root.parent_span_id == "" and {s.trace_id for s in spans} == {root.trace_id}
    assert root.attributes["faber.environment"] == "production" and root.attributes["db.system"] == "postgresql"
    assert root.attributes["faber.backup.id"] == run.json["result"]["backup_id"]
    assert root.resource["service.name"] == "faber" and root.resource["deployment.environment"] == "ci"
    migration = next(s for s in spans if s.name == "faber.migration")
    apply = next(s for s in spans if s.name == "faber.step.apply")
    assert migration.parent_span_id == apply.span_id and migration.attributes["faber.migration.name"] == "001_users"
    assert all(CANARY_PASSWORD.encode() not in body for body in otlp_receiver.bodies)


def test_failed_command_exports_an_error_root_span(cli_project, run_faber, otlp_receiver):
    project, env = cli_project
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{otlp_receiver.endpoint}/v1/traces",
        "OTEL_SERVICE_NAME": "deploys",
    }
    (project / "migrations/002_broken.sql").write_text("CREATE TABLE users (id int);")

    run = run_faber("migrate", "production", "--yes", "--cwd", str(project), env={**env, **otel})

    assert run.returncode == 6, run.output
    spans = otlp_receiver.spans()
    root = next(s for s in spans if s.name == "faber.migrate")
    assert root.status_code == ERROR and root.attributes["faber.exit_code"] == 6
    assert root.resource["service.name"] == "deploys"
    failed = next(s for s in spans if s.attributes.get("faber.migration.name") == "002_broken")
    assert failed.status_code == ERROR and failed.events[0][0] == "exception"


def test_an_unreachable_collector_does_not_change_the_result(cli_project, run_faber):
    project, env = cli_project
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}

    run = run_faber("status", "production", "--json", "--cwd", str(project), env={**env, **otel})

    assert run.returncode == 0, run.output
    assert run.json["result"]["pending"] == ["001_users"]


def test_the_exporters_own_messages_mask_the_collectors_credentials(cli_project, run_faber):
    """The SDK quotes a malformed headers variable whole, and the exporter the endpoint's URL (here
    with a token as its query) in each failed export: both on stderr, neither with the token."""
    project, env = cli_project
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:1/?token={CANARY_PASSWORD}",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization:{CANARY_PASSWORD}",
    }

    run = run_faber("status", "production", "--json", "--cwd", str(project), env={**env, **otel})

    assert run.returncode == 0, run.output
    assert "Header format invalid" in run.stderr and "/?token=***" in run.stderr, run.stderr
    assert CANARY_PASSWORD not in run.output


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_exporters_come_from_the_standard_variables(monkeypatch, variables, expected):
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    assert requested_exporters() == expected


def test_with_nothing_configured_no_sdk_is_loaded(cli_project):
    """Neither ``--help`` nor a whole command imports the OpenTelemetry SDK or an exporter."""
    project, env = cli_project
    probe = (
        "import sys\n"
        "from faber_core.cli import app\n"
        "for args in (['--help'], ['status', 'production', '--json', '--cwd', sys.argv[1]]):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, (args, done.code)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')))\n"
        "print('LOADED', loaded)\n"
    )
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}

    proc = subprocess.run(
        [sys.executable, "-c", probe, str(project)], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []"


def test_a_url_given_as_the_environment_is_exported_without_its_password(cli_project, run_faber, otlp_receiver):
    """The root span named the command line's environment as given: a database URL pasted there
    reached the collector with its password, which the command's document masked."""
    project, env = cli_project
    pasted = f"postgresql://app:{CANARY_PASSWORD}@db.internal:5432/app"

    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint}

    run = run_faber("status", pasted, "--json", "--cwd", str(project), env={**env, **otel})

    assert run.returncode == 2 and run.json["code"] == "CONFIG_INVALID", run.output
    root = next(s for s in otlp_receiver.spans() if s.name == "faber.status")
    assert root.attributes["faber.environment"] == "postgresql://app:***@db.internal:5432/app"
    assert all(CANARY_PASSWORD.encode() not in body for body in otlp_receiver.bodies)
    assert CANARY_PASSWORD not in run.output
