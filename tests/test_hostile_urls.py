"""Database URLs an operator in a hurry writes: never echoed, refused as CONFIG_INVALID (exit 2)
with the hint to percent-encode, and no piece of the password in any channel."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import textwrap
from collections.abc import Mapping
from urllib.parse import quote

import pytest

from faber_core.context import Database
from faber_core.errors import ConfigError
from faber_core.secrets import Redactor, Secret, secret_forms
from faber_core.testing.fixtures import (
    CANARY_PASSWORD,
    create_database,
    database_url_for,
    discard_database,
    free_port,
)
from faber_core.vocabulary import DOCUMENT_MODULES, words_by_field

PASSWORD_PIECES = ("Alpha-93xq", "Bravo-51kd", "Charlie-7z")


def pieces_in(text: str) -> list[str]:
    return [piece for piece in PASSWORD_PIECES if piece in text]


# Each URL is refused; each carries password pieces that a parser would cut apart.
BAD_URLS = {
    "one slash": f"postgresql:/user:{PASSWORD_PIECES[0]}@127.0.0.1/db",
    "unescaped @": f"postgresql://postgres:{PASSWORD_PIECES[0]}@{PASSWORD_PIECES[1]}@127.0.0.1/postgres",
    "unescaped /": f"postgresql://postgres:{PASSWORD_PIECES[0]}/{PASSWORD_PIECES[1]}@127.0.0.1/postgres",
    "unescaped ?": f"postgresql://postgres:{PASSWORD_PIECES[0]}?{PASSWORD_PIECES[1]}@127.0.0.1/postgres",
    "unescaped @ and ?, the rest as a parameter": (
        f"postgresql://postgres:{PASSWORD_PIECES[0]}@{PASSWORD_PIECES[1]}?{PASSWORD_PIECES[2]}=@127.0.0.1/postgres"
    ),
    "unescaped #": f"postgresql://postgres:{PASSWORD_PIECES[0]}#{PASSWORD_PIECES[1]}@127.0.0.1/postgres",
    "bad percent": f"postgresql://postgres:{PASSWORD_PIECES[0]}%zz{PASSWORD_PIECES[1]}@127.0.0.1/postgres",
    "percent nul": f"postgresql://postgres:{PASSWORD_PIECES[0]}%00@127.0.0.1/postgres",
    "broken IPv6": f"postgresql://u:{PASSWORD_PIECES[0]}@[::1/db",
    "port not a number": f"postgresql://u:{PASSWORD_PIECES[0]}@127.0.0.1:{PASSWORD_PIECES[1]}/db",
    "no host, password as port": f"postgresql://u:{PASSWORD_PIECES[0]}",
    "line break": f"postgresql://u:{PASSWORD_PIECES[0]}\n@127.0.0.1/db",
    "not a URL": f"host=127.0.0.1 password={PASSWORD_PIECES[0]}",
    "unescaped space": f"postgresql://u:{PASSWORD_PIECES[0]} {PASSWORD_PIECES[1]}@127.0.0.1/db",
    # Python's host lookup raised a UnicodeError for these (exit 1, an unexpected error).
    "host part of 64 characters": f"postgresql://u:{PASSWORD_PIECES[0]}@{'h' * 64}.example.com/db",
    "empty host part": f"postgresql://u:{PASSWORD_PIECES[0]}@db..example.com/db",
    "second host of a list": f"postgresql://u:{PASSWORD_PIECES[0]}@127.0.0.1,{'h' * 64}/db",
    "?host= parameter": f"postgresql://u:{PASSWORD_PIECES[0]}@/db?host={'h' * 64}",
}


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_a_url_that_does_not_parse_one_way_is_refused_without_echo(url):
    with pytest.raises(ConfigError) as raised:
        Database(Secret(url), source="$APP_DATABASE_URL")

    error = raised.value
    assert "$APP_DATABASE_URL" in error.message
    assert any("Percent-encode" in suggestion for suggestion in error.suggestions)
    assert pieces_in(error.message + "\n".join(error.suggestions)) == []


# A MySQL URL goes to one parser only (faber's, which hands PyMySQL its pieces), so an unescaped
# '@' in the password is read one way: up to the last '@', as a browser would; a space as a space.
MYSQL_BAD_URLS = {
    name: url.replace("postgresql://", "mysql://", 1)
    for name, url in BAD_URLS.items()
    if "://" in url and name not in ("unescaped @", "?host= parameter", "unescaped space")
}


@pytest.mark.parametrize("url", MYSQL_BAD_URLS.values(), ids=MYSQL_BAD_URLS.keys())
def test_a_mysql_url_that_does_not_parse_one_way_is_refused_without_echo(url):
    with pytest.raises(ConfigError) as raised:
        Database(Secret(url), source="$APP_DATABASE_URL")

    error = raised.value
    assert "$APP_DATABASE_URL" in error.message
    assert pieces_in(error.message + "\n".join(error.suggestions)) == []


# Values libpq refuses only as it connects: the health check failed (exit 3, "Verify database is
# running"), or, for the one faber's own sessions set themselves, only the backup's pg_dump.
UNACCEPTED_SETTINGS = {
    "sslmode": ("?sslmode=bogus", "sslmode is none of libpq's values"),
    "target_session_attrs": ("?target_session_attrs=primary-ish", "target_session_attrs is none of libpq's values"),
    "keepalives": ("?keepalives=abc", "keepalives is not a whole number"),
    "connect_timeout": ("?connect_timeout=ten", "connect_timeout is not a whole number"),
    "port 0": (":0", "the port is not a number from 1 to 65535"),
    "port parameter": ("?port=70000", "the port is not a number from 1 to 65535"),
}


@pytest.mark.parametrize(("setting", "said"), UNACCEPTED_SETTINGS.values(), ids=UNACCEPTED_SETTINGS.keys())
def test_a_setting_libpq_would_refuse_as_it_connects_is_refused_before_anything_runs(
    setting, said, faber_project, run_faber, database_url, query
):
    url = database_url.replace("@", f":{PASSWORD_PIECES[0]}@", 1)
    url = url.replace(":5432/", ":0/") if setting == ":0" else url + setting
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url}

    run = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 2 and run.json["code"] == "CONFIG_INVALID", run.output
    assert said in run.json["error"] and pieces_in(run.output) == []
    assert query("SELECT to_regclass('users')") == [(None,)]
    assert not (project / ".faber" / "backups").exists()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:@h/db",
        "postgresql:///db",
        "postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgresql://u:p%40ss%2Fw%3Ford%25@[::1]:5432/db?schema=s&sslmode=disable",
        "postgresql://u:p@/db?host=/var/run/postgresql",
        "postgres://u:p@h/db?user=other",
    ],
)
def test_valid_urls_still_parse(url):
    database = Database(Secret(url), source="$X")

    assert database.conninfo_params()


def test_encoded_special_characters_reach_libpq_decoded():
    password = "p@ss/w:rd?#%[]x y"
    database = Database(
        Secret(f"postgresql://app:{quote(password, safe='')}@127.0.0.1/app?schema=billing"), source="$X"
    )

    assert database.client_env()["PGPASSWORD"] == password
    assert database.schema == "billing" and database.name == "app"


def test_the_redactor_knows_every_piece_a_parser_can_cut():
    url = f"postgresql://postgres:{PASSWORD_PIECES[0]}@{PASSWORD_PIECES[1]}/{PASSWORD_PIECES[2]}@127.0.0.1/db"
    redactor = Redactor()
    redactor.add(url)

    messages = [
        f"failed to resolve host '{PASSWORD_PIECES[1]}@127.0.0.1'",  # libpq: userinfo ends at the first @
        f'invalid port number: "{PASSWORD_PIECES[0]}"',
        f"Port could not be cast to integer value as '{PASSWORD_PIECES[2]}'",
        json.dumps({"error": f"{PASSWORD_PIECES[1]}/{PASSWORD_PIECES[2]}"}),
        quote(f"{PASSWORD_PIECES[0]}@{PASSWORD_PIECES[1]}", safe=""),
    ]

    assert [pieces_in(redactor.redact(message)) for message in messages] == [[]] * len(messages)
    # The user name and host are not secrets: they stay readable.
    assert redactor.redact("user postgres on 127.0.0.1") == "user postgres on 127.0.0.1"


def test_json_and_repr_escaped_passwords_are_masked():
    password = 'q"uo\\te-Échappé'
    redactor = Redactor()
    redactor.add(f"postgresql://u:{quote(password, safe='')}@h/db")

    for text in (json.dumps({"p": password}), json.dumps({"p": password}, ensure_ascii=False), repr(password)):
        assert "uo" not in redactor.redact(text), text
    assert all(len(form) >= 3 for form in secret_forms("postgresql://u:ab@h/db"))


@pytest.mark.parametrize(
    "name", ["one slash", "unescaped @", "broken IPv6", "bad percent", "host part of 64 characters"]
)
def test_the_cli_refuses_bad_urls_with_exit_2_in_every_channel(name, faber_project, run_faber):
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": BAD_URLS[name], "FABER_DEBUG": "1"}

    as_json = run_faber("migrate", "production", "--dry-run", "--json", "--cwd", str(project), env=env)
    human = run_faber("health", "production", "--cwd", str(project), env=env)

    assert as_json.returncode == human.returncode == 2, as_json.output + human.output
    assert as_json.json["code"] == "CONFIG_INVALID"
    assert any("Percent-encode" in s for s in as_json.json["recovery"]["suggestions"])
    audit = project / ".faber" / "audit.log"
    channels = as_json.output + human.output + (audit.read_text() if audit.exists() else "")
    assert pieces_in(channels) == [] and "Traceback" not in channels


def test_debug_tracebacks_are_redacted(faber_project, run_faber, tmp_path, database_url):
    """An unexpected error quoting the password, shown with FABER_DEBUG=1: a traceback, masked."""
    password = f"{PASSWORD_PIECES[0]}%{PASSWORD_PIECES[1]}"
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "faber_test_boom.py").write_text(
        textwrap.dedent(
            f"""
            from faber_core import hookimpl

            @hookimpl
            def faber_health_checks(context, checks):
                raise RuntimeError("cannot use password {password} or " + {password!r}.split("%")[1])
            """
        )
    )
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    url = database_url.replace(":canary-Pw-7f3a9c1e@", f":{quote(password, safe='')}@")
    env = {
        "FABER_PLUGINS": "faber_core.testing.sqlfiles,faber_test_boom",
        "PYTHONPATH": str(plugin_dir),
        "APP_URL": url,
        "FABER_DEBUG": "1",
    }

    run = run_faber("health", "production", "--json", "--cwd", str(project), env=env)

    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr and "RuntimeError" in run.stderr
    assert run.json["code"] == "INTERNAL_ERROR"
    assert pieces_in(run.output) == [], run.output


@pytest.mark.parametrize(
    ("engine", "repeated"),
    [
        ("postgresql", "sslmode=require&sslmode=disable"),
        ("mysql", "ssl-mode=REQUIRED&ssl-mode=DISABLED"),
        ("postgresql", "schema=app&schema=public"),
    ],
)
def test_a_query_parameter_given_twice_with_two_values_is_refused(engine, repeated, faber_project, run_faber, request):
    """libpq and PyMySQL take the last value, another reader may take the first: TLS asked for
    and then disabled must not be talked in the clear."""
    url = request.getfixturevalue("database_url" if engine == "postgresql" else "mysql_database_url")
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}}
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": f"{url}?{repeated}"}

    run = run_faber("health", "production", "--json", "--cwd", str(project), env=env)

    name = repeated.partition("=")[0]
    assert run.returncode == 2, run.output
    assert run.json["code"] == "CONFIG_INVALID" and f"{name} is given twice" in run.json["error"], run.json


@pytest.mark.parametrize("parameter", ["password", "sslpassword"])
def test_a_password_given_as_a_query_parameter_is_masked_everywhere(
    parameter, faber_project, run_faber, database_url, query
):
    """libpq reads ``?password=`` as the password (``?sslpassword=`` as the client key's): a
    database error quoting it is masked as one quoting the URL's userinfo is."""
    secret = PASSWORD_PIECES[0]
    address = database_url.replace(f":{CANARY_PASSWORD}@", "@")
    url = f"{address}?{parameter}={secret}" + ("&sslmode=disable" if parameter == "sslpassword" else "")
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_leaky.sql": f"CREATE TABLE users (id bigint); SELECT '{secret}'::int;"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url, "FABER_DEBUG": "1"}

    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    history = run_faber("history", "production", "--cwd", str(project), env=env)

    assert deploy.returncode == 6 and history.returncode == 0, deploy.output + history.output
    assert "invalid input syntax for type integer" in deploy.json["error"]
    rows = query("SELECT row_to_json(d)::text FROM faber.faber_deployments d")
    channels = [deploy.output, history.output, (project / ".faber" / "audit.log").read_text(), *(r[0] for r in rows)]
    assert pieces_in("\n".join(channels)) == []


def test_a_password_sharing_a_piece_with_the_manifest_leaves_the_backup_restorable(
    faber_project, run_faber, database_url
):
    """A password such as ``...@2026`` (percent-encoded in the URL) has the piece ``2026``, masked
    in output wherever it stands. The manifest was written through the redactor too: its id, dates
    and location lost the year, and every backup was unusable (a rollback found none)."""
    year = str(dt.datetime.now(dt.timezone.utc).year)
    password = f"{CANARY_PASSWORD}@{year}"
    url = database_url.replace(f":{CANARY_PASSWORD}@", f":{quote(password, safe='')}@")
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url}
    cwd = ("--cwd", str(project))

    backup = run_faber("backup", "production", "--reason", f"before {password}", "--json", *cwd, env=env)
    listed = run_faber("backups", "production", "--json", *cwd, env=env)
    rollback = run_faber("rollback", "production", "--yes", "--json", *cwd, env=env)

    assert backup.returncode == listed.returncode == 0, backup.output + listed.output
    assert [b["status"] for b in listed.json["result"]["backups"]] == ["available"], listed.json
    assert rollback.returncode == 0, rollback.output
    (manifest,) = (project / ".faber" / "backups" / "production").glob("*.json")
    assert json.loads(manifest.read_text())["id"] == manifest.name.removesuffix(".json")
    files = [path.read_bytes().decode(errors="replace") for path in (project / ".faber").rglob("*") if path.is_file()]
    assert CANARY_PASSWORD not in "\n".join([backup.output, listed.output, rollback.output, *files])


def test_a_password_piece_inside_a_longer_word_is_not_masked(
    faber_project, run_faber, database_url, postgres_admin_url, query
):
    """The ``2026`` of a password ``...@2026`` is masked where a parser could print it (between
    delimiters), not inside the backup ids and timestamped migration names of that year: the
    documents named a backup ``backup-***1128-...`` that no rollback could find, and staging's
    history recorded migrations production's staging proof never found (exit 10)."""
    year = str(dt.datetime.now(dt.timezone.utc).year)
    password = f"{CANARY_PASSWORD}@{year}"
    staging_url = database_url.replace(f":{CANARY_PASSWORD}@", f":{quote(password, safe='')}@")
    production = create_database(postgres_admin_url)
    try:
        production_url = database_url_for(postgres_admin_url, production, password=quote(password, safe=""))
        environments = {
            "staging": {"database_url_env": "STAGING_URL", "mode": "deploy"},
            "production": {"database_url_env": "APP_URL", "requires_success_in": "staging"},
        }
        project = faber_project(
            {"database": {"migration_tool": "sqlfiles", "environments": environments}},
            {f"migrations/{year}0101000000_users.sql": "CREATE TABLE users (id bigint);"},
        )
        env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "STAGING_URL": staging_url, "APP_URL": production_url}
        cwd = ("--cwd", str(project))

        staging = run_faber("migrate", "staging", "--yes", "--json", *cwd, env=env)
        deploy = run_faber("migrate", "production", "--yes", "--json", *cwd, env=env)
        assert staging.returncode == deploy.returncode == 0, staging.output + deploy.output
        backup_id = deploy.json["result"]["backup_id"]
        rollback = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", *cwd, env=env)
    finally:
        discard_database(postgres_admin_url, production)

    assert [m["name"] for m in deploy.json["result"]["migrations"]] == [f"{year}0101000000_users"]
    assert (project / ".faber" / "backups" / "production" / f"{backup_id}.json").is_file(), backup_id
    assert rollback.returncode == 0, rollback.output
    (recorded,) = query("SELECT migrations::text FROM faber.faber_deployments WHERE environment = 'staging'")
    assert f"{year}0101000000_users" in recorded[0]
    assert CANARY_PASSWORD not in staging.output + deploy.output + rollback.output


@pytest.mark.parametrize("replication", ["database", "true", "1"])
def test_a_url_asking_for_a_replication_session_is_refused_before_anything_runs(
    replication, faber_project, run_faber, database_url, query
):
    """A replication session takes no ordinary query: faber's lock wait failed as a lock ended
    by another run (exit 7) and its status read as a bug (exit 1, INTERNAL_ERROR)."""
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": f"{database_url}?replication={replication}"}

    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    status = run_faber("status", "production", "--json", "--cwd", str(project), env=env)

    for run in (deploy, status):
        assert run.returncode == 2, run.output
        assert run.json["code"] == "CONFIG_INVALID" and "replication session" in run.json["error"], run.json
        assert CANARY_PASSWORD not in run.output
    assert query("SELECT relname FROM pg_class WHERE relname = 'users'") == []


@pytest.mark.parametrize("password", ["name", "pending", "migrations", "status"])
def test_a_password_that_is_the_name_of_a_field_deploys(password, faber_project, run_faber, database_url, query):
    """A password masks the same word in every output; it masked the names of the documents' and
    events' fields too: the progress printer failed on every event (``event.data["name"]``, exit
    1) and the documents lost their shape (``"***": []``). The password, as a value, appears
    nowhere."""
    url = database_url.replace(f":{CANARY_PASSWORD}@", f":{password}@")
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url}

    deploy = run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env)
    again = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    status = run_faber("status", "production", "--json", "--cwd", str(project), env=env)

    assert deploy.returncode == again.returncode == status.returncode == 0, deploy.output + again.output
    assert again.json["status"] == status.json["status"] == "success", again.output
    assert status.json["result"]["applied"] == ["001_users"] and status.json["result"]["pending"] == []
    assert query("SELECT count(*) FROM users") == [(0,)]
    audit = (project / ".faber" / "audit.log").read_text()
    documents = [again.json, status.json, *map(json.loads, audit.splitlines())]
    # As a value only where it is that field's fixed word (``"step": "status"``), never elsewhere.
    assert [key for key in fields_holding(documents, password) if password not in every_fixed_word().get(key, ())] == []


def every_fixed_word() -> Mapping[str, frozenset[str]]:
    """The fixed words of every field, with every module of document models loaded."""
    for module in DOCUMENT_MODULES:
        importlib.import_module(module)
    return words_by_field()


def fields_holding(data: object, text: str) -> list[str]:
    """The keys, anywhere in JSON ``data``, whose value is exactly ``text``."""
    if isinstance(data, dict):
        return [key for key, item in data.items() if item == text] + fields_holding(list(data.values()), text)
    if isinstance(data, list):
        return [key for item in data for key in fields_holding(item, text)]
    return []


@pytest.mark.parametrize("password", ["success", "failed", "pending", "error"])
def test_a_password_that_is_a_status_word_leaves_the_documents_words_and_masks_free_text(
    password, faber_project, run_faber, database_url
):
    """A password masked the same word as a field's value: ``"status": "***"``, ``"rollback_status":
    "***"`` in --json documents and events. A field's fixed word (a status word, a step name, an
    exit name) stays; the password in free text (a database error's message) is masked still."""
    url = database_url.replace(f":{CANARY_PASSWORD}@", f":{password}@")
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {
            "migrations/001_users.sql": "CREATE TABLE users (id bigint);",
            "migrations/002_broken.sql": f"DO $$ BEGIN RAISE EXCEPTION 'refused: {password} here'; END $$;",
        },
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url}

    run_faber("migrate", "production", "--dry-run", "--cwd", str(project), env=env)  # history: "pending"
    failed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    (project / "migrations" / "002_broken.sql").unlink()
    deployed = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    status = run_faber("status", "production", "--json", "--cwd", str(project), env=env)
    history = run_faber("history", "production", "--json", "--cwd", str(project), env=env)

    assert failed.returncode == 6, failed.output
    assert failed.json["status"] == "error" and failed.json["code"] == "MIGRATION_FAILED", failed.json
    assert failed.json["result"]["rollback_status"] == "success", failed.json
    assert "refused: *** here" in failed.json["error"] and f"refused: {password} here" not in failed.output
    assert deployed.returncode == status.returncode == 0, deployed.output + status.output
    assert deployed.json["status"] == status.json["status"] == "success", deployed.output
    events = [json.loads(line) for line in (project / ".faber" / "audit.log").read_text().splitlines()]
    assert {event["data"]["step"] for event in events if event["kind"] == "step.started"} >= {"backup", "apply"}
    assert history.returncode == 0, history.output
    documents = [failed.json, deployed.json, status.json, history.json, *events]
    assert fields_holding(history.json, password), history.json  # the history's own words, kept
    vocabulary = every_fixed_word()
    # No field's fixed word masked, and the password as a value only where it is one.
    assert [key for key in fields_holding(documents, "***") if key in vocabulary] == []
    assert [key for key in fields_holding(documents, password) if password not in vocabulary.get(key, ())] == []


def values_outside_fixed_words(data: object, vocabulary: Mapping[str, frozenset[str]]) -> list[str]:
    """Every text value anywhere in JSON ``data`` but a field's own fixed word."""
    if isinstance(data, dict):
        return [
            value
            for key, item in data.items()
            for value in ([item] if isinstance(item, str) and item not in vocabulary.get(key, ()) else [])
            + (values_outside_fixed_words(item, vocabulary) if isinstance(item, dict | list) else [])
        ]
    if isinstance(data, list):
        return [value for item in data for value in values_outside_fixed_words(item, vocabulary)]
    return []


@pytest.mark.parametrize("password", ["passed", "pass", "deploy", "deploy-migrations", "migration-status"])
def test_a_password_that_is_a_word_of_the_deploy_document_leaves_it_whole_and_is_masked_elsewhere(
    password, faber_project, run_faber, database_url
):
    """``"health_check_before": "***"`` (or ``"***ed"`` for ``pass``), ``"operation": "***"``,
    ``"mode": "***"``: these fields were typed as any text, so the redactor knew no word of theirs."""
    url = database_url.replace(f":{CANARY_PASSWORD}@", f":{password}@")
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url}

    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)
    status = run_faber("status", "production", "--json", "--cwd", str(project), env=env)

    assert deploy.returncode == status.returncode == 0, deploy.output + status.output
    assert deploy.json["operation"] == "deploy-migrations" and status.json["operation"] == "migration-status"
    result = deploy.json["result"]
    assert (result["health_check_before"], result["health_check_after"], result["mode"]) == (
        "passed",
        "passed",
        "deploy",
    )
    events = [json.loads(line) for line in (project / ".faber" / "audit.log").read_text().splitlines()]
    assert {event["operation"] for event in events} == {"deploy-migrations", "migration-status"}
    vocabulary = every_fixed_word()
    texts = values_outside_fixed_words([deploy.json, status.json, *events], vocabulary)
    assert [text for text in texts if password in text] == []
    assert password not in deploy.stderr + status.stderr


@pytest.mark.parametrize(
    "password, options, word", [("failed", (), "failed"), ("skipped", ("--skip-health-check",), "skipped")]
)
def test_a_password_that_is_the_health_check_word_of_an_unreachable_deploy_leaves_it_whole(
    password, options, word, faber_project, run_faber
):
    url = f"postgresql://postgres:{password}@127.0.0.1:{free_port()}/postgres"
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url}

    deploy = run_faber("migrate", "production", "--yes", "--json", *options, "--cwd", str(project), env=env)

    assert deploy.returncode == 3 and deploy.json["result"]["health_check"] == word, deploy.output
    assert [text for text in values_outside_fixed_words(deploy.json, every_fixed_word()) if password in text] == []
    # The progress is free text, where the word is masked; the end message after it renders the
    # document, whose health_check keeps its fixed word, as the human output without --json does.
    progress, _, end_message = deploy.stderr.partition("❌ FAILED")
    assert password not in progress
    assert f"Health check: {word}" in end_message


def test_a_password_too_short_to_mask_is_warned_about_once(faber_project, run_faber, database_url):
    """A password shorter than 3 characters is not masked (it would mask ordinary words): faber
    says so once on stderr, without the password."""
    password = "q7"
    url = database_url.replace(f":{CANARY_PASSWORD}@", f":{password}@")
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": {"production": {"database_url_env": "APP_URL"}}}},
        {"migrations/001_users.sql": "CREATE TABLE users (id bigint);"},
    )
    env = {"FABER_PLUGINS": "faber_core.testing.sqlfiles", "APP_URL": url, "PGPASSWORD": "z9"}

    deploy = run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project), env=env)

    assert deploy.returncode == 0, deploy.output
    warnings = [line for line in deploy.stderr.splitlines() if "cannot be masked" in line]
    assert warnings == [
        "warning: a password or other secret shorter than 3 characters cannot be masked in faber's output "
        "(masking it would mask ordinary words): use a longer one"
    ], deploy.stderr
    assert password not in warnings[0] and "z9" not in warnings[0]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql:///shop?host=/var/run/postgresql&user=app",
        "postgresql://app@/shop?dbname=shop",
        "postgresql:///shop",
    ],
)
def test_the_sibling_of_a_database_reached_without_a_host_is_on_the_same_server(url):
    """A rehearsal's copy and a swap's databases are siblings of the target: built with urlunsplit,
    a URL without a host lost its "//" (postgresql:/copy), which faber then refused: the lint's
    rehearsal did not run, and left its copy behind."""
    target = Database(Secret(url), source="$X")

    sibling = target.sibling("copy é", source="rehearsal copy of $X")

    assert sibling.url.reveal().startswith("postgresql://")
    assert sibling.url.reveal().partition("?")[0].endswith("/copy%20%C3%A9")
    assert sibling.conninfo_params()["dbname"] == "copy é"
    assert sibling.conninfo_params().get("host") == target.conninfo_params().get("host")
