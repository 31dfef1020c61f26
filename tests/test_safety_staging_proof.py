"""Staging proof across two real databases: production refuses what staging has not deployed
successfully with the same checksum, reads staging's history through its URL, fails closed
without it, and records an explicit override."""

from __future__ import annotations

import json

import pytest

from faber_core.errors import EXIT_CODES
from faber_core.testing.fixtures import CANARY_PASSWORD, create_database, database_url_for, discard_database

SQLFILES = {"FABER_PLUGINS": "faber_core.testing.sqlfiles"}
USERS = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n"


@pytest.fixture
def staging_url(postgres_admin_url):
    name = create_database(postgres_admin_url)
    yield database_url_for(postgres_admin_url, name, password=CANARY_PASSWORD)
    discard_database(postgres_admin_url, name)


@pytest.fixture
def two_environments(faber_project, database_url, staging_url, tmp_path):
    unprotected = {"protected": False}
    environments = {
        "staging": {"database_url_env": "STAGING_DATABASE_URL", **unprotected},
        "production": {"database_url_env": "PROD_DATABASE_URL", "requires_success_in": "staging", **unprotected},
    }
    project = faber_project(
        {"database": {"migration_tool": "sqlfiles", "environments": environments}},
        {"migrations/001_users.sql": USERS},
    )
    env = {**SQLFILES, "PROD_DATABASE_URL": database_url, "STAGING_DATABASE_URL": staging_url}
    return project, env


def migrate(run_faber, project, env, environment, *flags):
    return run_faber("migrate", environment, "--yes", "--json", "--cwd", str(project), *flags, env=env)


def test_production_refuses_until_staging_succeeded_then_passes(two_environments, run_faber):
    project, env = two_environments

    refused = migrate(run_faber, project, env, "production")
    assert refused.returncode == EXIT_CODES["STAGING_PROOF_MISSING"] == 10, refused.output
    assert refused.json["result"]["unproven_migrations"] == ["001_users"]
    assert "faber migrate staging" in " ".join(refused.json["recovery"]["suggestions"])

    assert migrate(run_faber, project, env, "staging").returncode == 0
    passed = migrate(run_faber, project, env, "production")

    assert passed.returncode == 0, passed.output
    assert passed.json["result"]["staging_proof"]["status"] == "passed"
    assert CANARY_PASSWORD not in refused.output + passed.output


def test_an_edited_migration_needs_a_new_staging_deploy(two_environments, run_faber):
    project, env = two_environments
    assert migrate(run_faber, project, env, "staging").returncode == 0
    (project / "migrations/001_users.sql").write_text(USERS + "CREATE INDEX users_email ON users (email);\n")

    refused = migrate(run_faber, project, env, "production")

    assert refused.returncode == 10 and refused.json["result"]["unproven_migrations"] == ["001_users"]


def test_fails_closed_when_stagings_url_is_not_available(two_environments, run_faber):
    project, env = two_environments
    env = {key: value for key, value in env.items() if key != "STAGING_DATABASE_URL"}

    refused = migrate(run_faber, project, env, "production")

    assert refused.returncode == 10, refused.output
    assert "STAGING_DATABASE_URL is not set" in refused.json["error"]
    assert "--skip-staging-proof" in " ".join(refused.json["recovery"]["suggestions"])


def test_the_override_deploys_and_is_recorded_in_the_audit_log(two_environments, run_faber):
    project, env = two_environments
    env = {key: value for key, value in env.items() if key != "STAGING_DATABASE_URL"}

    deployed = migrate(run_faber, project, env, "production", "--skip-staging-proof")

    assert deployed.returncode == 0, deployed.output
    assert deployed.json["result"]["staging_proof"] == {
        "requires_success_in": "staging",
        "status": "skipped",
        "skipped_by": "--skip-staging-proof",
    }
    events = [json.loads(line) for line in (project / ".faber/audit.log").read_text().splitlines()]
    skipped = [e for e in events if e["kind"] == "staging_proof.skipped"]
    assert skipped and skipped[0]["data"]["migrations"] == ["001_users"]


def test_a_migration_named_with_stagings_password_is_proven(two_environments, run_faber, staging_url):
    """Staging's history records the names as its output shows them, the word of its password
    masked (``001_add_***_roles`` for a password ``admin``): production never found the migration
    it deployed and refused it for ever (exit 10)."""
    project, env = two_environments
    (project / "migrations" / "002_add_admin_roles.sql").write_text("CREATE TABLE admin_roles (id bigint);\n")
    env = {**env, "STAGING_DATABASE_URL": staging_url.replace(f":{CANARY_PASSWORD}@", ":admin@")}

    staging = migrate(run_faber, project, env, "staging")
    production = migrate(run_faber, project, env, "production")

    assert staging.returncode == 0, staging.output
    assert production.returncode == 0, production.output
    assert production.json["result"]["staging_proof"]["status"] == "passed"
    assert CANARY_PASSWORD not in staging.output + production.output
