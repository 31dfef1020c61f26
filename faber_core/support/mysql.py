"""MySQL/MariaDB helpers for handlers (``context.database.engine.name == "mysql"``).

DDL is not transactional there: a handler runs a migration holding DDL statement by statement
(:func:`split_statements`, :func:`is_ddl`) and reports how many committed before a failure
(``MigrationFailure.statements_committed``), with the server's error number as ``sqlstate``
(:func:`error_code`; :data:`LOCK_WAIT_TIMEOUT`, 1205, is retried by faber when the transaction
rolled back). :func:`faber_lock_name_on_server` is the ``GET_LOCK`` name faber holds during a
deploy (the server's name of the database, hashed by :func:`faber_lock_name`).
faber keeps its own tables in the target database on MySQL: :data:`FABER_TABLES` names them
(``table_name NOT IN %s`` leaves them out of what a handler counts as the application's).
"""

from faber_core.backup.mysqldump import FABER_TABLES
from faber_core.engines.mysql import (
    LOCK_WAIT_TIMEOUT,
    MySQLConnection,
    error_code,
    faber_lock_name,
    faber_lock_name_on_server,
    is_ddl,
    split_statements,
    strip_leading_comments,
)

__all__ = [
    "FABER_TABLES",
    "LOCK_WAIT_TIMEOUT",
    "MySQLConnection",
    "error_code",
    "faber_lock_name",
    "faber_lock_name_on_server",
    "is_ddl",
    "split_statements",
    "strip_leading_comments",
]
