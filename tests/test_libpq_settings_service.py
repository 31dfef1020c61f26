"""libpq settings no environment variable carries (``sslpassword``, ``keepalives_idle``, ...) reach
faber's own connections and, through a service file held in memory, pg_dump, pg_restore and psql.

The shared test server speaks no TLS: most tests read what libpq itself took for each setting in
faber and in a child program started as faber starts pg_dump; one starts a server of its own with
TLS, to which an encrypted client key unlocked by ``sslpassword`` connects.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def tls_server() -> Iterator[tuple[int, Path]]:
    """A PostgreSQL server of its own requiring TLS on 127.0.0.1, trusting every user; yields its
    port and the directory holding a client certificate and its key, encrypted with the canary
    password."""
    if os.geteuid() != 0 or not all(shutil.which(name) for name in ("initdb", "pg_ctl", "openssl", "runuser")):
        pytest.skip("needs root (to run the server as the postgres user), initdb, pg_ctl, openssl and runuser")
    # Not under pytest's tmp_path, which the postgres user cannot enter.
    directory = Path(tempfile.mkdtemp(prefix="faber-tls-"))
    directory.chmod(0o755)
    as_postgres = ["runuser", "-u", "postgres", "--"]
    data = directory / "data"
    with socket.socket() as probe:  # a port no other server of the machine's tests listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*argv: str | Path) -> None:
        subprocess.run([str(arg) for arg in argv], check=True, capture_output=True)

    try:
        keys = {"server": ["-nodes"], "client": ["-passout", f"pass:{CANARY_PASSWORD}"]}
        for name, protection in keys.items():
            certificate, key = directory / f"{name}.crt", directory / f"{name}.key"
            subject = "/CN=localhost" if name == "server" else "/CN=postgres"
            run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "2", "-subj", subject, *protection,
                "-keyout", key, "-out", certificate)  # fmt: skip
            key.chmod(0o600)
        data.mkdir()
        for path in (data, directory / "server.key", directory / "server.crt"):
            shutil.chown(path, "postgres")
        run(*as_postgres, "initdb", "-D", data, "-U", "postgres", "--auth=trust")
        settings = (
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c ssl=on "
            f"-c ssl_cert_file={directory}/server.crt -c ssl_key_file={directory}/server.key"
        )
        (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\n")
        run(*as_postgres, "pg_ctl", "-D", data, "-l", data / "server.log", "-o", settings, "-w", "start")
        yield port, directory
    finally:
        if (data / "postmaster.pid").exists():
            run(*as_postgres, "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(directory)


def test_an_encrypted_client_key_unlocked_by_sslpassword_serves_faber_and_pg_dump(tls_server):
    port, directory = tls_server
    certificate, key = directory / "client.crt", directory / "client.key"
    database = Database(
        Secret(
            f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=require"
            f"&sslcert={certificate}&sslkey={key}&sslpassword={CANARY_PASSWORD}"
        ),
        source="$URL",
    )

    with database.connect(application_name="test") as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    dump = run_captured(["pg_dump", "--schema-only"], env=child_environment(database.client_env()))

    assert row == (True,)
    assert dump.returncode == 0, dump.stderr  # without the password, libpq cannot load the key
