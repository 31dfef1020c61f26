from __future__ import annotations

import pytest

from faber_core.backup.pg_dump import find_client_dir
from faber_core.errors import BackupFailed


def test_refuses_a_pg_dump_older_than_the_server():
    with pytest.raises(BackupFailed) as raised:
        find_client_dir(server_major=99)

    assert "No pg_dump as new as the server (PostgreSQL 99)" in raised.value.message
    assert "postgresql-client-99" in raised.value.suggestions[0]


def test_finds_client_tools_for_the_running_server(postgres_admin_url):
    import psycopg

    with psycopg.connect(postgres_admin_url) as conn:
        major = conn.info.server_version // 10000

    directory = find_client_dir(major)

    assert all((directory / name).exists() for name in ("pg_dump", "pg_restore", "psql"))
