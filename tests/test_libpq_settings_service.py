"""libpq settings no environment variable carries (``sslpassword``, ``keepalives_idle``, ...) reach
faber's own connections and, through a service file held in memory, pg_dump, pg_restore and psql.

An encrypted client key, which ``sslpassword`` unlocks, needs a server speaking TLS; the test
server does not, so these tests read what libpq itself took for each setting in faber and in a
child program started as faber starts pg_dump.
"""

from __future__ import annotations

import json
import sys

from faber_core.context import Database
from faber_core.processes import child_environment, run_captured
from faber_core.secrets import Secret
from faber_core.testing.fixtures import CANARY_PASSWORD

# What libpq took for each setting, as the child sees it: never printing the sslpassword itself.
CHILD = """
import json, psycopg
with psycopg.connect("") as conn:
    options = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
print(json.dumps({
    "sslpassword is the canary": options["sslpassword"] == CANARY,
    "keepalives_idle": options["keepalives_idle"],
    "application_name": options["application_name"],
    "dbname": options["dbname"],
}))
"""


def settings_in_a_child(database: Database) -> dict:
    program = f"CANARY = {CANARY_PASSWORD!r}\n{CHILD}"
    run = run_captured([sys.executable, "-c", program], env=child_environment(database.client_env()))
    assert run.returncode == 0, run.stderr
    assert CANARY_PASSWORD not in run.stdout + run.stderr
    return json.loads(run.stdout)


def test_settings_without_a_variable_reach_faber_and_the_programs_it_runs(database_url):
    url = database_url.replace(f":{CANARY_PASSWORD}@", "@")
    database = Database(Secret(f"{url}?sslmode=disable&sslpassword={CANARY_PASSWORD}&keepalives_idle=7"), source="$URL")

    with database.connect(application_name="test") as conn:
        options = {option.keyword.decode(): (option.val or b"").decode() for option in conn.pgconn.info}
    child = settings_in_a_child(database)

    assert options["sslpassword"] == CANARY_PASSWORD and options["keepalives_idle"] == "7"
    assert child["sslpassword is the canary"] and child["keepalives_idle"] == "7"
    assert child["dbname"] == database.name
    assert CANARY_PASSWORD not in json.dumps(database.client_env())  # the service file is not in the environment
    dump = run_captured(["pg_dump", "--schema-only"], env=child_environment(database.client_env()))
    assert dump.returncode == 0, dump.stderr  # pg_dump's libpq reads the service file too


def test_a_url_naming_a_service_gets_its_settings_and_the_urls_in_the_programs_service(
    database_url, tmp_path, monkeypatch
):
    service_file = tmp_path / "pg_service.conf"
    service_file.write_text("[billing]\napplication_name=from-the-service\nkeepalives_idle=3\n")
    monkeypatch.setenv("PGSERVICEFILE", str(service_file))
    url = database_url.replace(f":{CANARY_PASSWORD}@", "@")
    database = Database(
        Secret(f"{url}?service=billing&sslmode=disable&sslpassword={CANARY_PASSWORD}&keepalives_idle=9"),
        source="$URL",
    )

    child = settings_in_a_child(database)

    assert child["application_name"] == "from-the-service"  # the service's own setting
    assert child["keepalives_idle"] == "9" and child["sslpassword is the canary"]  # the URL's win
