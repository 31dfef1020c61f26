"""Passwords from files: libpq's password file (``~/.pgpass``, ``PGPASSFILE``, ``?passfile=``) and
service file (``PGSERVICEFILE``, ``?service=``) are masked like the URL's password, and a file faber
cannot read is a clear error that never quotes it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faber_core.postgres.passwords import MAX_FILE_BYTES, passwords_from_files
from faber_core.testing.fixtures import CANARY_PASSWORD
from faber_core.testing.otlp import OtlpReceiver

USERS = "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);"
# Fails with a database error that quotes the canary, as errors quoting a statement's values do.
LEAKY = f"ALTER TABLE users ADD COLUMN note text; SELECT '{CANARY_PASSWORD}'::int;"
CONNECTION = {"host": "db.internal", "port": "5433", "dbname": "shop", "user": "deploy"}


def write_passfile(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_the_password_file_lines_for_the_server_and_user_are_learnt_as_libpq_reads_them(tmp_path):
    passfile = write_passfile(
        tmp_path / "pgpass",
        "# db.internal:5433:shop:deploy:commented-out\n"
        "db.internal:5432:shop:deploy:other-port\n"
        "db.internal:5433:shop:admin:other-user\n"
        "replica.internal:5433:shop:deploy:other-host\n"
        "db.internal:5433:shop:deploy:pass\\:with\\\\escapes\r\n"
        "*:*:*:deploy:wildcard-Pw\n",
    )

    found = passwords_from_files({**CONNECTION, "passfile": str(passfile)}, environ={})

    assert found == ["pass:with\\escapes", "wildcard-Pw"]


def test_a_password_in_the_url_or_pgpassword_leaves_the_password_file_unread(tmp_path):
    passfile = tmp_path / "pgpass"
    passfile.mkdir()  # unreadable as a file: reading it would be an error

    assert passwords_from_files({**CONNECTION, "passfile": str(passfile), "password": "x"}, environ={}) == []
    assert passwords_from_files({**CONNECTION}, environ={"PGPASSFILE": str(passfile), "PGPASSWORD": "x"}) == []


def test_the_named_services_password_is_learnt_and_the_urls_settings_win_over_the_services(tmp_path):
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text(
        "[billing]\npassword=billing-Pw\n\n[shop]\n# comment\n  sslmode=require\npassfile=" + f"{tmp_path}/pgpass\n"
    )
    write_passfile(tmp_path / "pgpass", "db.internal:5433:shop:deploy:from-the-services-passfile\n")
    environ = {"PGSERVICEFILE": str(service_file)}

    assert passwords_from_files({**CONNECTION, "service": "billing"}, environ) == ["billing-Pw"]
    assert passwords_from_files({**CONNECTION, "service": "shop"}, environ) == ["from-the-services-passfile"]
    assert passwords_from_files({**CONNECTION, "service": "billing", "password": "url"}, environ) == []


def test_an_account_missing_from_the_password_database_is_no_error(tmp_path, monkeypatch):
    """A container may run faber as a user id /etc/passwd does not list: libpq then finds no home
    nor user name of its own, and neither does faber, without failing."""

    def unknown(uid: int):
        raise KeyError(uid)

    monkeypatch.setattr("pwd.getpwuid", unknown)
    write_passfile(tmp_path / ".pgpass", "*:*:*:deploy:from-home\n")

    assert passwords_from_files({"host": "db.internal"}, environ={}) == []
    assert passwords_from_files({"host": "db.internal", "user": "deploy"}, environ={"HOME": str(tmp_path)}) == [
        "from-home"
    ]


def deploy_project(faber_project):
    environment = {"database_url_env": "APP_DATABASE_URL", "lock_wait_seconds": 1}
    return faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}},
        {"migrations/001_users.sql": USERS, "migrations/002_leaky.sql": LEAKY},
    )


def without_password(database_url: str) -> str:
    assert f":{CANARY_PASSWORD}@" in database_url
    return database_url.replace(f":{CANARY_PASSWORD}@", "@")


def in_a_password_file(tmp_path: Path) -> tuple[str, dict[str, str]]:
    passfile = write_passfile(tmp_path / "pgpass", f"127.0.0.1:5432:*:postgres:{CANARY_PASSWORD}\n")
    return "", {"PGPASSFILE": str(passfile)}


def in_a_service_file(tmp_path: Path) -> tuple[str, dict[str, str]]:
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text(f"[faber_canary]\npassword={CANARY_PASSWORD}\nsslmode=disable\n")
    return "?service=faber_canary", {"PGSERVICEFILE": str(service_file)}


@pytest.mark.parametrize("password_in", [in_a_password_file, in_a_service_file], ids=["password file", "service file"])
def test_a_password_from_a_file_is_masked_in_every_channel(
    faber_project, database_url, run_faber, query, tmp_path, password_in
):
    """The canary is libpq's password only through the file; a failing migration quotes it."""
    project = deploy_project(faber_project)
    query_string, file_env = password_in(tmp_path)
    with OtlpReceiver() as receiver:
        env = {
            "FABER_PLUGINS": "faber_core.testing.sqlfiles",
            "APP_DATABASE_URL": without_password(database_url) + query_string,
            "FABER_DEBUG": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            **file_env,
        }
        deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
        history = run_faber("history", "production", "--cwd", str(project), env=env)

    assert deploy.returncode == 6 and history.returncode == 0, deploy.output + history.output
    assert "invalid input syntax for type integer" in deploy.json["error"]
    assert deploy.json["result"]["backup_id"]  # pg_dump ran, reading the same file
    rows = query("SELECT row_to_json(d)::text FROM faber.faber_deployments d")
    spans = [body.decode(errors="replace") for body in receiver.bodies] + [repr(span) for span in receiver.spans()]
    channels = {
        "stdout and stderr": deploy.output + history.output,
        "audit log": (project / ".faber" / "audit.log").read_text(),
        "history table": "\n".join(row[0] for row in rows),
        "spans": "\n".join(spans),
    }
    # Every channel carries the error quoting the canary, masked.
    assert all("invalid input syntax for type integer" in text for text in channels.values()), channels
    assert [name for name, text in channels.items() if CANARY_PASSWORD in text] == []


def unreadable(path: Path) -> None:
    path.symlink_to(path)  # faber runs as root in CI, where permissions would not stop it reading a file


def a_directory(path: Path) -> None:
    path.mkdir()


def a_fifo(path: Path) -> None:
    os.mkfifo(path)  # opened, it would wait for a writer that never comes


def endless(path: Path) -> None:
    path.symlink_to("/dev/zero")


def too_large(path: Path) -> None:
    with path.open("wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: its size costs no disk


def not_utf8(path: Path) -> None:
    path.write_bytes(f"127.0.0.1:5432:*:postgres:{CANARY_PASSWORD}\xff\n".encode("latin-1"))
    path.chmod(0o600)


def service_line_without_equals(path: Path) -> None:
    path.write_text(f"[faber_canary]\nsslmode=disable\n{CANARY_PASSWORD}\n")


NOT_A_REGULAR_FILE = "is not a regular file (a directory, FIFO, device or socket): refused"
SERVICE = ("PGSERVICEFILE", "?service=faber_canary")
BROKEN_FILES = {
    "password file unreadable": ("PGPASSFILE", "", unreadable, "password file", "Too many levels of symbolic links"),
    "password file a FIFO": ("PGPASSFILE", "", a_fifo, "password file", "is a FIFO: connecting would wait"),
    "password file too large": ("PGPASSFILE", "", too_large, "password file", "is larger than 16 MiB: refused"),
    "password file not UTF-8": ("PGPASSFILE", "", not_utf8, "password file", "not UTF-8 text (line 1)"),
    "service file unreadable": (*SERVICE, unreadable, "service file", "Too many levels of symbolic links"),
    "service file a directory": (*SERVICE, a_directory, "service file", NOT_A_REGULAR_FILE),
    "service file a FIFO": (*SERVICE, a_fifo, "service file", NOT_A_REGULAR_FILE),
    "service file a device": (*SERVICE, endless, "service file", NOT_A_REGULAR_FILE),
    "service file too large": (*SERVICE, too_large, "service file", "is larger than 16 MiB: refused"),
    "service file garbled": (*SERVICE, service_line_without_equals, "service file", "not key=value (line 3"),
}


@pytest.mark.parametrize("variable, query_string, break_file, kind, problem", BROKEN_FILES.values(), ids=BROKEN_FILES)
def test_a_password_or_service_file_faber_cannot_read_is_a_config_error_never_quoting_it(
    faber_project, database_url, run_faber, query, tmp_path, variable, query_string, break_file, kind, problem
):
    project = deploy_project(faber_project)
    broken = tmp_path / "broken.conf"
    break_file(broken)
    env = {
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
        "APP_DATABASE_URL": without_password(database_url) + query_string,
        variable: str(broken),
    }

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env, timeout=60)

    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID"
    assert f"PostgreSQL {kind} {broken}" in run.json["error"] and problem in run.json["error"]
    assert "Traceback" not in run.stderr and CANARY_PASSWORD not in run.output
    assert query("SELECT to_regclass('public.users')") == [(None,)]  # nothing applied


@pytest.mark.parametrize("make_passfile", [endless, a_directory], ids=["a device", "a directory"])
def test_a_password_file_that_is_not_a_regular_file_is_skipped_unread_as_libpq_skips_it(
    faber_project, database_url, run_faber, tmp_path, make_passfile
):
    """libpq takes no password from such a file (and warns of it itself); /dev/null, a common
    PGPASSFILE to keep ~/.pgpass out of the way, is one."""
    project = deploy_project(faber_project)
    passfile = tmp_path / "pgpass"
    make_passfile(passfile)
    env = {
        "FABER_PLUGINS": "faber_core.testing.sqlfiles",
        "APP_DATABASE_URL": without_password(database_url),
        "PGPASSFILE": str(passfile),
    }

    run = run_faber("status", "production", "--json", "--cwd", str(project), env=env, timeout=60)

    assert run.returncode == 0, run.output
    assert run.json["result"]["pending"] == ["001_users", "002_leaky"], run.output
