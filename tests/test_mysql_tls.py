"""TLS to MySQL/MariaDB as the URL asks for it (``ssl-mode``, ``ssl-ca``, Prisma's ``sslaccept`` and
``sslcert``): honoured by faber's own connections and by the mysqldump and mysql programs it runs,
and never quietly dropped. A private MariaDB with a certificate from a throwaway CA, started with
``require_secure_transport``, refuses every connection in the clear: a deploy with its backup, a
failure and the restore that follows only succeed there if every channel used TLS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faber_core.context import Database
from faber_core.errors import ConfigError
from faber_core.secrets import Secret
from faber_core.testing.fixtures import CANARY_PASSWORD, mysql_connect


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _make_authority(directory: Path, name: str) -> tuple[Path, Path]:
    key, certificate = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", key, "-out", certificate],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, certificate


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """(port, the CA that signed the server's certificate, another CA) of a private MariaDB that
    takes only TLS connections; any user and password get in (``skip-grant-tables``)."""
    programs = ["mariadbd", "mariadb-install-db", "openssl"]
    missing = [program for program in programs if not (shutil.which(program) or Path(f"/usr/sbin/{program}").exists())]
    if missing:
        pytest.skip(f"a private TLS MariaDB needs {', '.join(missing)}")
    directory = tmp_path_factory.mktemp("tls-mariadb")
    authority_key, authority = _make_authority(directory, "faber-test-ca")
    _, stranger = _make_authority(directory, "another-ca")
    server_key, request = directory / "server.key", directory / "server.csr"
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", server_key,
         "-out", request],
        check=True, capture_output=True,
    )  # fmt: skip
    (directory / "names.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    server_certificate = directory / "server.pem"
    subprocess.run(
        ["openssl", "x509", "-req", "-in", request, "-CA", authority, "-CAkey", authority_key, "-CAcreateserial",
         "-days", "2", "-extfile", directory / "names.cnf", "-out", server_certificate],
        check=True, capture_output=True,
    )  # fmt: skip
    data = directory / "data"
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = _free_port()
    server = subprocess.Popen(
        [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
         f"--port={port}", "--bind-address=127.0.0.1", f"--socket={directory / 'server.sock'}",
         f"--pid-file={directory / 'server.pid'}", f"--log-error={directory / 'server.log'}", "--skip-grant-tables",
         "--require-secure-transport=ON", f"--ssl-ca={authority}", f"--ssl-cert={server_certificate}",
         f"--ssl-key={server_key}"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the private MariaDB did not start: {(directory / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield port, authority, stranger
    finally:
        server.terminate()
        server.wait(timeout=60)


MIGRATIONS = {
    "001_users": "CREATE TABLE users (id int PRIMARY KEY, email varchar(200) NOT NULL);",
    "002_seed": "INSERT INTO users VALUES (1, 'a@example.com');",
}


@pytest.fixture
def tls_database(tls_server, request):
    port, _, _ = tls_server
    name = f"faber_tls_{request.node.name[-40:].lower()}".replace("[", "_").replace("]", "_").replace("-", "_")
    admin = f"mysql://root@127.0.0.1:{port}/mysql?ssl-mode=REQUIRED"
    with mysql_connect(admin) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.execute(f"CREATE DATABASE `{name}`")
    return f"mysql://app:{CANARY_PASSWORD}@127.0.0.1:{port}/{name}"


def deploy(faber_project, url: str, migrations: dict[str, str]) -> tuple[int, dict, str]:
    files = {f"migrations/{name}.sql": sql for name, sql in migrations.items()}
    environment = {"database_url_env": "TEST_DATABASE_URL", "require_approval": False, "backup_before_migrate": True}
    config = {"database": {"migration_tool": "sqlfiles", "environments": {"production": environment}}}
    project = faber_project(config, files)
    env = {**os.environ, "TEST_DATABASE_URL": url, "FABER_PLUGINS": "faber_core.testing.sqlfiles"}
    done = subprocess.run(
        [sys.executable, "-m", "faber_core", "migrate", "production", "--json"],
        cwd=project, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert CANARY_PASSWORD not in done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def tables(url: str) -> list[str]:
    with mysql_connect(url) as conn:
        return sorted(row[0] for row in conn.execute("SHOW TABLES").fetchall())


@pytest.mark.parametrize("asked", ["ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}", "sslaccept=strict&sslcert={ca}"])
def test_a_verified_deploy_its_backup_and_its_restore_all_go_over_tls(faber_project, tls_server, tls_database, asked):
    _, authority, _ = tls_server
    url = f"{tls_database}?{asked.format(ca=authority)}"
    code, document, stderr = deploy(faber_project, url, MIGRATIONS)
    assert code == 0, stderr
    assert document["result"]["backup_id"]

    # A DDL statement commits, the next fails: the restore (the mysql program) brings the backup back.
    failing = {**MIGRATIONS, "003_broken": "ALTER TABLE users ADD COLUMN nickname varchar(50);\nSELECT * FROM nowhere;"}
    code, document, stderr = deploy(faber_project, url, failing)

    assert code != 0
    assert document["result"]["rollback_status"] == "success", stderr
    with mysql_connect(url) as conn:
        columns = conn.execute("SHOW COLUMNS FROM users").fetchall()
        cipher = conn.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'").fetchall()
    assert [column[0] for column in columns] == ["id", "email"]
    assert cipher[0][1]


def test_a_server_certificate_from_another_authority_is_refused_before_any_change(
    faber_project, tls_server, tls_database
):
    _, _, stranger = tls_server
    url = f"{tls_database}?ssl-mode=VERIFY_CA&ssl-ca={stranger}"

    code, document, _ = deploy(faber_project, url, MIGRATIONS)

    assert code == 3, document
    assert "certificate" in json.dumps(document).lower()
    _, authority, _ = tls_server
    assert tables(f"{tls_database}?ssl-ca={authority}") == []


def test_tls_asked_of_a_server_without_it_is_refused_not_dropped(faber_project, mysql_database_url, mysql_query):
    # The machine's MariaDB has no TLS: a deploy that asked for it must not go ahead in the clear.
    code, document, _ = deploy(faber_project, f"{mysql_database_url}?ssl-mode=REQUIRED", MIGRATIONS)

    assert code == 3, document
    assert "SSL is required" in json.dumps(document)
    assert mysql_query("SHOW TABLES") == []


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("ssl-mode=SOMETIMES", "ssl-mode must be one of"),
        ("sslaccept=maybe", "sslaccept must be one of"),
        ("ssl-ca=/nonexistent/ca.pem", "does not exist"),
        ("sslidentity=client.p12&sslpassword=Bravo-51kd", "PKCS#12"),
        ("ssl-mode=DISABLED&ssl-ca={pem}", "DISABLED, yet"),
        ("ssl-key={pem}", "ssl-key needs ssl-cert"),
        ("ssl-ca={garbage}", "cannot be used"),
        ("ssl-ca={directory}", "is not a file"),
        ("ssl-ca={fifo}", "is not a file"),  # opening it would wait for a writer forever
        ("ssl-ca={fifo_link}", "is not a file"),
        ("ssl-ca=/dev/zero", "is not a file"),  # reading it would never end
        ("ssl-ca={huge}", "cannot be used"),
        ("ssl-cert={garbage}&ssl-key={fifo}", "is not a file"),
        ("charset=klingon", "is not a character set"),
    ],
)
def test_a_tls_or_charset_parameter_faber_cannot_honour_is_a_config_error(tmp_path, query, reason):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)
    (tmp_path / "link.pem").symlink_to(fifo)
    huge = tmp_path / "huge.pem"
    with huge.open("wb") as sparse:
        sparse.truncate(1 << 31)
    files = {"pem": garbage, "garbage": garbage, "directory": tmp_path, "fifo": fifo, "huge": huge}
    url = f"mysql://app:Alpha-93xq@127.0.0.1/app?{query.format(fifo_link=tmp_path / 'link.pem', **files)}"

    with pytest.raises(ConfigError) as raised:
        Database(Secret(url), source="$APP_DATABASE_URL")

    text = raised.value.message + "\n".join(raised.value.suggestions)
    assert reason in text
    assert "Alpha-93xq" not in text and "Bravo-51kd" not in text
