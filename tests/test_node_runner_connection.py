"""The connection a Node runner's ORM is given: what faber's own connections use, read from the
URL as libpq and faber's MySQL parser read it, never the URL for the ORM to parse again; a URL the
ORM's driver could not follow is refused. The real servers' side is in the TypeORM and Sequelize
plugins' test_*_connection.py."""

from __future__ import annotations

import subprocess
from urllib.parse import quote, urlsplit

import psycopg
import pytest

from faber_core.context import Database
from faber_core.errors import ConfigError
from faber_core.secrets import Secret
from faber_core.support.node.connection import runner_connection
from faber_core.testing.fixtures import CANARY_PASSWORD, create_database, discard_database


def connection(url: str) -> dict:
    return runner_connection(Database(Secret(url), source="$APP_DATABASE_URL"))


@pytest.fixture
def encoded_database(postgres_admin_url):
    """A database whose name needs percent-encoding in a URL; dropped after."""
    name = create_database(postgres_admin_url, prefix="shop é #")
    yield name
    discard_database(postgres_admin_url, name)


def test_the_runner_goes_where_faber_s_connection_went_as_libpq_read_the_url(postgres_admin_url, encoded_database):
    """An encoded database name, and libpq's ?dbname= and ?hostaddr= over the URL's path and host,
    which node-postgres would not read: the runner gets where faber's own connection went."""
    server = urlsplit(postgres_admin_url)
    url = (
        f"postgresql://{server.username}@localhost:{server.port}/decoy"
        f"?dbname={quote(encoded_database, safe='')}&hostaddr=127.0.0.1&application_name=deploy"
    )

    found = connection(url)

    assert (found["host"], found["port"], found["database"]) == ("127.0.0.1", server.port, encoded_database)
    assert (found["user"], found["application_name"]) == (server.username, "deploy")


def test_a_password_libpq_reads_from_the_environment_reaches_the_runner(database_url, monkeypatch):
    """The runner's environment has no PG* variables: the password faber's connection used goes
    with the connection."""
    monkeypatch.setenv("PGPASSWORD", CANARY_PASSWORD)

    found = connection(database_url)

    assert found["password"] == CANARY_PASSWORD


def test_without_tls_on_faber_s_connection_the_orm_s_own_ssl_option_applies(database_url):
    """The server here offers no TLS: libpq's prefer went without, and so may the ORM (its project's
    ssl option decides); where faber's connection was encrypted, the runner's is too."""
    assert connection(database_url)["tls"] is None


def test_mysql_socket_charset_and_tls_mode(tmp_path):
    found = connection(
        "mysql://app:p%C3%A9@db.internal:3307/shop?socket=/run/mysqld/mysqld.sock&ssl-mode=REQUIRED&charset=latin1"
    )

    assert (found["socket"], found["host"], found["port"]) == ("/run/mysqld/mysqld.sock", None, None)
    assert (found["password"], found["database"], found["tls"]["mode"]) == ("pé", "shop", "require")
    assert found["charset"] == "latin1"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
         "-keyout", tmp_path / "ca.key", "-out", tmp_path / "ca.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    preferred = connection(f"mysql://app@db.internal/shop?ssl-mode=PREFERRED&ssl-ca={tmp_path}/ca.pem")["tls"]
    assert (preferred["mode"], preferred["ca"]) == ("verify-ca", f"{tmp_path}/ca.pem")  # as faber's own connections
    assert connection("mysql://app@db.internal/shop")["charset"] is None  # the ORM's own default


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("requirepeer=postgres", "requirepeer="),
        ("gssencmode=require", "gssencmode=require"),
        ("channel_binding=require", "channel_binding=require"),
        ("sslcrldir=/etc/crl", "sslcrldir="),
        ("schema=app", "?schema=app"),
    ],
)
def test_a_setting_node_postgres_cannot_follow_is_refused_naming_it(query, named):
    with pytest.raises(ConfigError) as refused:
        connection(f"postgresql://app@db.internal/shop?{query}")

    assert named in refused.value.message and "$APP_DATABASE_URL" in refused.value.message


def test_several_hosts_are_refused():
    with pytest.raises(ConfigError):
        connection("postgresql://app@a,b/shop")


def test_a_url_without_a_host_goes_through_the_socket_directory_libpq_uses():
    """node-postgres alone would go to localhost: the runner gets the directory of libpq's own
    default Unix socket, as faber's connection found it."""
    url = "postgresql://postgres@/postgres"
    try:
        with psycopg.connect(url) as conn:
            used = (conn.info.host, conn.info.port)
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL on libpq's default Unix socket here")

    found = connection(url)

    assert (found["host"], found["port"]) == used and used[0].startswith("/")
