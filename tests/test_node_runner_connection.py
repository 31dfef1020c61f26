"""The connection a Node runner's ORM is given: what faber's own connections use, read from the
URL as libpq and faber's MySQL parser read it, never the URL for the ORM to parse again; a URL the
ORM's driver could not follow is refused. The real servers' side is in the TypeORM and Sequelize
plugins' test_*_connection.py."""

from __future__ import annotations

import psycopg
import pytest

from faber_core.context import Database
from faber_core.errors import ConfigError
from faber_core.secrets import Secret
from faber_core.support.node.connection import runner_connection


def connection(url: str) -> dict:
    return runner_connection(Database(Secret(url), source="$APP_DATABASE_URL"))


def test_an_ipv6_host_and_an_encoded_database_name_are_read_as_libpq_reads_them():
    found = connection("postgresql://app:pw@[::1]:6543/shop%20%C3%A9?application_name=deploy")

    assert (found["host"], found["port"], found["database"]) == ("::1", 6543, "shop é")
    assert (found["user"], found["password"], found["application_name"]) == ("app", "pw", "deploy")


def test_hostaddr_is_where_it_connects_and_the_host_is_what_tls_verifies():
    found = connection("postgresql://app@db.internal/shop?hostaddr=10.0.0.7&sslmode=verify-full&sslrootcert=system")

    assert found["host"] == "10.0.0.7"
    assert found["tls"]["mode"] == "verify-full" and found["tls"]["servername"] == "db.internal"


def test_mysql_socket_and_tls_mode():
    found = connection("mysql://app:p%C3%A9@db.internal:3307/shop?socket=/run/mysqld/mysqld.sock&ssl-mode=REQUIRED")

    assert (found["socket"], found["host"], found["port"]) == ("/run/mysqld/mysqld.sock", None, None)
    assert (found["password"], found["database"], found["tls"]["mode"]) == ("pé", "shop", "require")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("requirepeer=postgres", "requirepeer="),
        ("gssencmode=require", "gssencmode=require"),
        ("channel_binding=require", "channel_binding=require"),
        ("sslcrldir=/etc/crl", "sslcrldir="),
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
