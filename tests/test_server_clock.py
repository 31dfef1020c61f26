"""How far a database server's clock is from faber's: what faber takes off a time the server wrote
(a failed Prisma attempt's ``started_at``) to compare it with a backup's time, whatever time zone
the session is in."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from faber_core.engines.mysql import MySQLEngine
from faber_core.engines.postgres import PostgresEngine
from faber_core.testing.fixtures import mysql_connect

# Both servers run on this machine, by its clock: apart by no more than a round trip.
SAME_CLOCK = dt.timedelta(seconds=1)


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "America/Adak"])
def test_a_postgresql_server_on_faber_s_clock_is_not_ahead_in_any_session_time_zone(database_url, zone):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT set_config('TimeZone', %s, false)", [zone])
        assert abs(PostgresEngine().server_clock_ahead(conn)) < SAME_CLOCK


@pytest.mark.parametrize("zone", ["+00:00", "+13:00", "-10:00"])
def test_a_mysql_server_on_faber_s_clock_is_not_ahead_in_any_session_time_zone(mysql_database_url, zone):
    with mysql_connect(mysql_database_url) as conn:
        conn.execute("SET time_zone = %s", [zone])
        assert abs(MySQLEngine().server_clock_ahead(conn)) < SAME_CLOCK
