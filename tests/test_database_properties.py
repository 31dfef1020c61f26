"""A rollback puts back what lives on the database rather than in it, which pg_dump's archive
leaves out: its settings (for every role and for one role), its comment, its grants and its
connection limit. Each test's database has a name that needs quoting, and its own roles."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from faber_core.backup.database_properties import RECORD
from faber_core.backup.swap import previous_name, restoring_name
from faber_core.testing import sqlfiles
from faber_core.testing.fixtures import (
    CANARY_PASSWORD,
    TEST_SESSION,
    database_state,
    database_url_for,
    start_faber,
    wait_for,
)
from faber_core.testing.otlp import OtlpReceiver

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
GATE_LOCK = 4343

# What a migration may do to its database: each statement changes one property the backup had.
MIGRATION = """
DO $migration$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET work_mem = ''64MB''', current_database());
    EXECUTE format('ALTER DATABASE %I SET statement_timeout = ''5s''', current_database());
    EXECUTE format('ALTER DATABASE %I RESET search_path', current_database());
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET work_mem = ''128MB''', '{role}', current_database());
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET lock_timeout = ''1s''', '{role}', current_database());
    EXECUTE format('COMMENT ON DATABASE %I IS ''changed by a migration''', current_database());
    EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), '{role}');
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('ALTER DATABASE %I CONNECTION LIMIT 30', current_database());
END $migration$;
"""


def admin_execute(url: str, statement: sql.Composable | str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def properties(url: str) -> dict[str, list]:
    """The database's settings, comment and connection limit, and privileges."""
    state = database_state(url)
    return {key: state[key] for key in ("database_settings", "database", "database_privileges")}


@pytest.fixture
def target(postgres_admin_url, faber_project, monkeypatch):
    """``(database name, its URL, project_dir factory, role)``: a database whose name needs quoting,
    and a role of this test's own; all dropped after, with whatever a swap left."""
    suffix = uuid.uuid4().hex[:8]
    name = f"faber props 'q' \"d\" é {suffix}"
    role = f"faber_props_{suffix}"
    admin_execute(postgres_admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin_execute(postgres_admin_url, sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    url = database_url_for(postgres_admin_url, quote(name, safe=""), password=CANARY_PASSWORD)
    monkeypatch.setenv("TEST_DATABASE_URL", url)

    def project(restore_mode: str, migrations: dict[str, str] | None = None, url_env: str = "TEST_DATABASE_URL"):
        environment = {
            "database_url_env": url_env,
            "lock_wait_seconds": 1,
            "backup": {"provider": "pg_dump", "restore_mode": restore_mode, "jobs": 2},
        }
        files = {f"migrations/{file}.sql": text for file, text in (migrations or {}).items()}
        return faber_project(
            {"database": {"migration_tool": sqlfiles.TOOL, "environments": {"production": environment}}}, files
        )

    try:
        yield name, url, project, role
    finally:
        for each in (name, restoring_name(name), previous_name(name)):
            admin_execute(
                postgres_admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(each))
            )
        admin_execute(postgres_admin_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def set_up_properties(admin_url: str, name: str, role: str) -> None:
    """What the database has at the backup: a setting of a list parameter and a plain one, one for
    the role, a comment, a grant to the role, and a connection limit."""
    database, grantee = sql.Identifier(name), sql.Identifier(role)
    for statement in (
        "ALTER DATABASE {database} SET work_mem = '8MB'",
        'ALTER DATABASE {database} SET search_path TO app, "Mixed Case", public',
        "ALTER ROLE {grantee} IN DATABASE {database} SET work_mem = '16MB'",
        "COMMENT ON DATABASE {database} IS 'the shop''s database'",
        "GRANT CONNECT ON DATABASE {database} TO {grantee} WITH GRANT OPTION",
        "ALTER DATABASE {database} CONNECTION LIMIT 40",
    ):
        admin_execute(admin_url, sql.SQL(statement).format(database=database, grantee=grantee))


def rollback(run_faber, project_dir: Path, backup_id: str, env: dict[str, str] | None = None):
    return run_faber(
        *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
        cwd=project_dir,
        env={**SQLFILES, **(env or {})},
    )


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_rollback_puts_back_the_settings_comment_grants_and_connection_limit_a_migration_changed(
    target, run_faber, postgres_admin_url, restore_mode
):
    name, url, project, role = target
    project_dir = project(restore_mode, {"001_database": MIGRATION.replace("{role}", role)})
    set_up_properties(postgres_admin_url, name, role)
    at_backup = properties(url)
    deployed = run_faber("migrate", "production", "--yes", "--json", cwd=project_dir, env=SQLFILES)
    assert deployed.returncode == 0, deployed.output
    changed = properties(url)
    assert all(changed[key] != at_backup[key] for key in at_backup), changed

    done = rollback(run_faber, project_dir, deployed.json["result"]["backup_id"])

    assert done.returncode == 0, done.output
    assert CANARY_PASSWORD not in done.output
    assert properties(url) == at_backup
    report = done.json["result"]["provider_data"][RECORD]
    assert report["recorded"] and not report["not_restored"], report
    # In place, what the migration changed is put back; a swap gives the new database what the backup had.
    put_back = {"comment", "grants", "connection limit", "setting search_path", "setting work_mem"}
    put_back.add(f"setting work_mem of role {role}")
    if restore_mode == "in-place":
        put_back |= {"setting statement_timeout (added since)", f"setting lock_timeout of role {role} (added since)"}
    assert set(report["restored"]) == put_back, report


def take_backup(run_faber, project_dir: Path) -> str:
    done = run_faber("backup", "production", "--json", cwd=project_dir, env=SQLFILES)
    assert done.returncode == 0, done.output
    return done.json["result"]["id"]


def change_properties(admin_url: str, name: str, role: str) -> None:
    with psycopg.connect(database_url_for(admin_url, quote(name, safe="")), autocommit=True) as conn:
        conn.execute(MIGRATION.replace("{role}", role))


def restore_sessions(admin_url: str, name: str) -> list[tuple]:
    with psycopg.connect(admin_url) as conn:
        return conn.execute(
            "SELECT pid, wait_event FROM pg_stat_activity WHERE application_name LIKE 'faber restore %%'"
            " AND datname = %s",
            [name],
        ).fetchall()


def test_a_kill_in_the_middle_of_a_restore_leaves_the_database_s_properties_as_before(
    target, run_faber, postgres_admin_url
):
    """The properties are put back in the restore's transaction, before the archive: killed while
    the archive loads, the server rolls them back with the rest."""
    name, url, project, role = target
    project_dir = project("in-place")
    set_up_properties(postgres_admin_url, name, role)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE FUNCTION gate(int) RETURNS boolean LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_advisory_xact_lock_shared({GATE_LOCK}); RETURN true; END $$;
            CREATE TABLE accounts (id int PRIMARY KEY);
            CREATE TABLE zz_gated (id int CHECK (public.gate(id)));
            INSERT INTO accounts SELECT generate_series(1, 100); INSERT INTO zz_gated VALUES (1);
            """
        )
    backup_id = take_backup(run_faber, project_dir)
    change_properties(postgres_admin_url, name, role)
    before = database_state(url)

    with psycopg.connect(url, autocommit=True, application_name=TEST_SESSION) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", [GATE_LOCK])
        faber = start_faber(
            *("rollback", "production", "--to", backup_id, "--yes", "--discard-app-writes", "--json"),
            cwd=project_dir,
            env=SQLFILES,
        )
        try:
            wait_for(
                lambda: any(event == "advisory" for _, event in restore_sessions(postgres_admin_url, name)),
                "the restore to reach the gated table",
            )
            faber.send_signal(signal.SIGKILL)
            faber.wait(timeout=60)
        finally:
            if faber.poll() is None:
                faber.kill()
            faber.communicate()
        wait_for(lambda: not restore_sessions(postgres_admin_url, name), "the restore session to end", timeout=20)

    assert faber.returncode == -signal.SIGKILL
    assert database_state(url) == before


def without_the_record(project_dir: Path, backup_id: str) -> None:
    """Make the backup's manifest one an older faber wrote: without the database's properties."""
    manifest = project_dir / ".faber" / "backups" / "production" / f"{backup_id}.json"
    document = json.loads(manifest.read_text())
    del document["provider_data"][RECORD], document["private_data"][RECORD]
    manifest.write_text(json.dumps(document))


def test_a_backup_of_an_older_faber_restores_leaving_the_properties_and_saying_so(
    target, run_faber, postgres_admin_url
):
    name, url, project, role = target
    project_dir = project("in-place")
    set_up_properties(postgres_admin_url, name, role)
    admin_execute(url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = take_backup(run_faber, project_dir)
    at_backup = database_state(url)
    without_the_record(project_dir, backup_id)
    change_properties(postgres_admin_url, name, role)
    admin_execute(url, "INSERT INTO accounts VALUES (2)")
    changed = properties(url)

    done = rollback(run_faber, project_dir, backup_id)

    assert done.returncode == 0, done.output
    # The backup's tables, the properties as the migration left them.
    assert database_state(url) == {**at_backup, **changed}
    assert done.json["result"]["provider_data"][RECORD]["recorded"] is False
    assert "does not record them (taken by an older faber)" in done.json["result"]["details"]


def test_an_unreadable_record_stops_the_restore_before_anything_changes(target, run_faber, postgres_admin_url):
    name, url, project, role = target
    project_dir = project("in-place")
    admin_execute(url, "CREATE TABLE accounts (id int); INSERT INTO accounts VALUES (1)")
    backup_id = take_backup(run_faber, project_dir)
    manifest = project_dir / ".faber" / "backups" / "production" / f"{backup_id}.json"
    document = json.loads(manifest.read_text())
    document["private_data"][RECORD]["grants"] = [["PUBLIC", "DROP TABLE accounts; --", False, "postgres"]]
    manifest.write_text(json.dumps(document))
    admin_execute(url, "INSERT INTO accounts VALUES (2)")
    before = database_state(url)

    done = rollback(run_faber, project_dir, backup_id)

    assert done.returncode == 8, done.output
    assert f"unreadable {RECORD}" in done.json["error"] and "the database is unchanged" in done.json["error"]
    assert database_state(url) == before


@pytest.fixture
def deploy_user(target, postgres_admin_url):
    """The URL of a login role owning the test's database, neither superuser nor CREATEROLE:
    it may change the database's own settings, comment, grants and limit, not another role's settings."""
    name, url, project, role = target
    user = f"{role}_deploy"
    admin_execute(
        postgres_admin_url,
        sql.SQL(
            "CREATE ROLE {user} LOGIN NOSUPERUSER NOCREATEROLE CREATEDB; ALTER DATABASE {db} OWNER TO {user}"
        ).format(user=sql.Identifier(user), db=sql.Identifier(name)),
    )
    try:
        yield url.replace("://postgres:", f"://{user}:")
    finally:
        as_admin = database_url_for(postgres_admin_url, quote(name, safe=""))
        admin_execute(as_admin, sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(user)))
        admin_execute(as_admin, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(user)))
        admin_execute(postgres_admin_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))


def test_what_the_deploy_user_may_not_change_is_left_and_named_and_the_rest_restored(
    target, deploy_user, run_faber, postgres_admin_url
):
    name, url, project, role = target
    project_dir = project("in-place", url_env="DEPLOY_URL")
    env = {"DEPLOY_URL": deploy_user}
    set_up_properties(postgres_admin_url, name, role)
    at_backup = properties(url)
    done = run_faber("backup", "production", "--json", cwd=project_dir, env={**SQLFILES, **env})
    assert done.returncode == 0, done.output
    change_properties(postgres_admin_url, name, role)

    done = rollback(run_faber, project_dir, done.json["result"]["id"], env)

    assert done.returncode == 0, done.output
    assert CANARY_PASSWORD not in done.output
    report = done.json["result"]["provider_data"][RECORD]
    refused = {entry.split(":")[0] for entry in report["not_restored"]}
    assert refused == {
        f"setting lock_timeout of role {role} (added since)",
        f"setting work_mem of role {role}",
    }, report
    assert "permission denied" in report["not_restored"][0]
    assert "database properties not restored, left as they are" in done.json["result"]["details"]
    now = properties(url)
    # The role's settings are the migration's; the rest is the backup's.
    assert now["database_settings"] == sorted(
        [setting for setting in at_backup["database_settings"] if setting[0] != role]
        + [(role, "lock_timeout=1s"), (role, "work_mem=128MB")]
    )
    assert {key: now[key] for key in now if key != "database_settings"} == {
        key: at_backup[key] for key in at_backup if key != "database_settings"
    }


def test_a_swap_that_could_not_give_the_new_database_the_backup_s_properties_is_refused(
    target, deploy_user, run_faber, postgres_admin_url
):
    name, url, project, role = target
    project_dir = project("swap", url_env="DEPLOY_URL")
    env = {"DEPLOY_URL": deploy_user}
    set_up_properties(postgres_admin_url, name, role)
    done = run_faber("backup", "production", "--json", cwd=project_dir, env={**SQLFILES, **env})
    assert done.returncode == 0, done.output
    change_properties(postgres_admin_url, name, role)
    before = database_state(url)

    done = rollback(run_faber, project_dir, done.json["result"]["id"], env)

    assert done.returncode == 8, done.output
    assert CANARY_PASSWORD not in done.output
    assert f"setting work_mem of role {role}: permission denied" in done.json["error"], done.json["error"]
    assert database_state(url) == before


# A setting an application keeps secret (a key its row-level security policies read with current_setting).
SECRET = "jwt-canary-7f3a9c"
ROTATE = """
DO $migration$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET "app.jwt_secret" TO ''rotated''', current_database());
END $migration$;
"""


def test_a_setting_s_value_shows_in_no_output_and_a_rollback_puts_it_back(target, run_faber, postgres_admin_url):
    name, url, project, role = target
    project_dir = project("in-place", {"001_rotate": ROTATE})
    admin_execute(
        postgres_admin_url,
        sql.SQL('ALTER DATABASE {} SET "app.jwt_secret" TO {}').format(sql.Identifier(name), sql.Literal(SECRET)),
    )
    at_backup = properties(url)
    assert ("", f"app.jwt_secret={SECRET}") in at_backup["database_settings"]
    outputs = []
    with OtlpReceiver() as receiver:
        env = {**SQLFILES, "FABER_DEBUG": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}

        def run(*args: str):
            done = run_faber(*args, cwd=project_dir, env=env)
            outputs.append(done.output)
            return done

        assert run("backup", "production", "--json").returncode == 0
        assert run("backups", "production").returncode == 0
        listed = run("backups", "production", "--json")
        deployed = run("migrate", "production", "--yes", "--json")
        assert deployed.returncode == 0, deployed.output
        assert ("", "app.jwt_secret=rotated") in properties(url)["database_settings"]
        backup_id = deployed.json["result"]["backup_id"]
        restored = rollback(run_faber, project_dir, backup_id, env)
        outputs.append(restored.output)
        assert restored.returncode == 0, restored.output
        assert properties(url) == at_backup
        assert restored.json["result"]["provider_data"][RECORD]["restored"] == ["setting app.jwt_secret"]

        # A value the server refuses to set: its reason names the parameter, the value masked.
        manifest = project_dir / ".faber" / "backups" / "production" / f"{backup_id}.json"
        document = json.loads(manifest.read_text())
        document["private_data"][RECORD]["settings"].append({"role": None, "name": "work_mem", "value": SECRET})
        manifest.write_text(json.dumps(document))
        refused = rollback(run_faber, project_dir, backup_id, env)
        outputs.append(refused.output)
        assert refused.returncode == 0, refused.output
        assert refused.json["result"]["provider_data"][RECORD]["not_restored"] == [
            'setting work_mem: invalid value for parameter "work_mem": "<value>"'
        ]
        spans = [body.decode(errors="replace") for body in receiver.bodies] + [repr(s) for s in receiver.spans()]

    # The listing says which settings are recorded, without their values; the manifest keeps them.
    shown = listed.json["result"]["backups"][0]["provider_data"][RECORD]["settings"]
    assert shown == [{"role": None, "name": "app.jwt_secret"}]
    assert SECRET in manifest.read_text()
    assert "private_data" not in listed.output
    state = project_dir / ".faber"
    files = {
        str(path.relative_to(state)): path.read_bytes().decode(errors="replace")
        for path in state.rglob("*")
        if path.is_file() and path.parent.name != "production"  # the backups: the manifests keep the value
    }
    assert "audit.log" in files and spans
    with psycopg.connect(url) as conn:
        history = [row[0] for row in conn.execute("SELECT row_to_json(d)::text FROM faber.faber_deployments d")]
    channels = {"outputs": "\n".join(outputs), "spans": "\n".join(spans), "history": "\n".join(history), **files}
    assert [channel for channel, text in channels.items() if SECRET in text] == []
