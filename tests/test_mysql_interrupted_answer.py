"""An interrupt while faber's MySQL/MariaDB connection reads an answer ends the server session and
goes on as the interrupt, wherever in the answer it came."""

from __future__ import annotations

from faber_core.testing.fixtures import mysql_connect


def test_a_session_ended_in_the_middle_of_a_result_leaves_no_parser_error(mysql_database_url, mysql_admin_url):
    """An interrupt that comes as the rows of a result are read (here: every row read, its closing
    packet not yet) leaves the socket inside that result. Ending the session reads what the server
    had sent after the interrupt; it took that closing packet for the start of a result and failed in
    the protocol's parser (struct.error), and faber ended with "Unexpected error: unpack_from
    requires a buffer of at least 9 bytes" instead of INTERRUPTED (seen at the preflight of a MySQL
    deploy sent SIGTERM). What follows is not read as results: which statements finished after the
    one whose result was being read is unknown (None)."""
    conn = mysql_connect(mysql_database_url)
    session = conn.server_thread_id[0]
    conn.query("SELECT 1", unbuffered=True)  # the column's description read, its row not yet
    result = conn._result
    assert result._read_rowdata_packet_unbuffered() == (1,)  # the row; its closing packet is next

    conn.end_session()
    result.unbuffered_active = False  # the session is gone: nothing left for it to read

    assert conn.answered_after_interrupt is None
    with mysql_connect(mysql_admin_url) as admin:
        assert admin.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", [session]).fetchone() is None
