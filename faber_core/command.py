"""The ``faber`` command's entry point (``[project.scripts]`` and ``python -m faber_core``).

It holds SIGINT, SIGTERM and SIGHUP before it imports the CLI: the imports take a few hundred
milliseconds, and an interrupt during them would end faber with a ``KeyboardInterrupt``
traceback (SIGINT) or with no document at all (SIGTERM). Held, the interrupt is raised as the
command's run begins and ends it the way every interrupt does: an ``INTERRUPTED`` document, exit
130, nothing done (faber_core/interrupts.py).
"""

from __future__ import annotations

import sys

from faber_core import interrupts


def main() -> None:
    interrupts.hold_outside_runs()
    from faber_core.cli import main as run_command_line

    try:
        run_command_line()
    finally:
        # A command line that ended before any run (--help, a usage error) ran nothing: the
        # interrupt held while it started still ends faber as an interrupt, not as a success.
        signal_name = interrupts.held_without_run()
        if signal_name is not None:
            from faber_core.errors import Interrupted, exit_code_for

            sys.stderr.write(f"Interrupted by {signal_name} before faber started: nothing was done\n")
            sys.exit(exit_code_for(Interrupted.code))
