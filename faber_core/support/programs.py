"""Client programs (``pg_dump``, a tool's CLI): find them, and run them so that they die with faber
and credentials never reach their command line.

Give a program its connection through the environment (``context.database.client_env()`` or a
variable such as ``DATABASE_URL``), never in argv, and pass anything it prints through the run's
redactor (:func:`run_tool` does). Say how one that failed ended with :func:`how_it_ended`
(``exit code 3``, ``killed by SIGKILL (Killed)``).
"""

from faber_core.processes import (
    ToolRun,
    child_environment,
    find_program,
    how_it_ended,
    run_tool,
    spawn,
    stop,
    supervised,
)

__all__ = ["ToolRun", "child_environment", "find_program", "how_it_ended", "run_tool", "spawn", "stop", "supervised"]
