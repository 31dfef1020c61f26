"""An example faber backup provider: ``pg_dump -Fd -j 2`` into ``.faber/pgdump-dir/<env>/``."""

PROVIDER = "pgdump-dir"
