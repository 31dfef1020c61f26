"""The libpq settings no environment variable carries (``sslpassword``, ``keepalives``, ...),
handed to pg_dump, pg_restore and psql in a service file, as libpq reads none from the environment.

Never on their command line, where every user of the machine reads them, and never on disk: the
file is a memory file (``memfd``) of faber's, which the programs open by its ``/proc`` path while
faber runs, and which goes when faber does (and the programs with it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from faber_core.errors import ConfigError
from faber_core.postgres.passwords import service_entry
from faber_core.postgres.url import LIBPQ_ENV

SERVICE = "faber_url_settings"
"""The service the file holds: a name no user's own service file is likely to use."""


def settings_service(params: Mapping[str, object], source: str) -> dict[str, str]:
    """``PGSERVICEFILE`` and ``PGSERVICE`` naming a service with the URL's ``params`` (libpq's
    keywords) that no variable carries. A URL naming a service of its own gets that service's
    settings in it as well, but for those the URL sets: in libpq a service's settings win over the
    variables, and the URL's over the service's."""
    settings = {key: str(value) for key, value in params.items() if key not in LIBPQ_ENV and value is not None}
    if params.get("service"):
        entry = service_entry(str(params["service"]), os.environ)
        settings = {**{key: value for key, value in entry.items() if key not in params}, **settings}
    for key, value in settings.items():
        # libpq's service file has no quoting: a line ends at a line break, and loses its trailing blanks.
        if "\n" in value or value != value.rstrip():
            raise ConfigError(
                f"The database URL in {source} sets {key} to a value ending in a blank or holding a line break, "
                "which pg_dump and psql cannot be given",
                suggestions=[f"Remove the blanks and line breaks from {key}"],
            )
    if not hasattr(os, "memfd_create"):
        raise ConfigError(
            f"The database URL in {source} sets {', '.join(sorted(settings))}, which faber hands pg_dump and "
            "psql only on Linux",
            suggestions=["Run faber on Linux, or leave these settings out of the URL"],
        )
    text = f"[{SERVICE}]\n" + "".join(f"{key}={value}\n" for key, value in settings.items())
    # Not inherited: the programs open it by path, as a file, while faber holds it open.
    descriptor = os.memfd_create("faber-libpq-service")
    os.write(descriptor, text.encode())
    return {"PGSERVICEFILE": f"/proc/{os.getpid()}/fd/{descriptor}", "PGSERVICE": SERVICE}
