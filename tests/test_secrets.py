from __future__ import annotations

from faber_core.context import Database
from faber_core.secrets import MASK, Redactor, Secret


def test_secret_never_shows_its_value():
    secret = Secret("postgresql://app:hunter22@db/app")

    assert str(secret) == repr(secret) == f"{secret}" == MASK
    assert secret.reveal().endswith("@db/app")


def test_redactor_masks_known_values_in_raw_and_encoded_forms():
    redactor = Redactor()
    redactor.add("postgresql://app:p%40ss%2Fword@db.internal:5432/app")

    text = redactor.redact("failed for p@ss/word and p%40ss%2Fword")

    assert "p@ss/word" not in text and "p%40ss%2Fword" not in text


def test_redactor_masks_any_url_userinfo_and_password_settings():
    redactor = Redactor()

    text = redactor.redact("connect postgres://bob:s3cret@host/db failed; dsn: host=x password=hunter2 user=y")

    assert "s3cret" not in text and "hunter2" not in text
    assert "postgres://bob:***@host/db" in text and "user=y" in text


def test_database_keeps_prisma_schema_but_hides_it_from_libpq():
    database = Database(
        Secret("postgresql://app:pw@127.0.0.1:5432/app?schema=billing&connection_limit=5&sslmode=disable"),
        source="$URL",
    )

    assert database.schema == "billing"
    assert "schema" not in database.url.reveal() and "sslmode=disable" in database.url.reveal()
    env = database.client_env()
    assert env["PGPASSWORD"] == "pw" and env["PGDATABASE"] == "app" and env["PGSSLMODE"] == "disable"
