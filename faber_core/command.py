"""The ``faber`` command's entry point (``[project.scripts]`` and ``python -m faber_core``).

It holds SIGINT, SIGTERM and SIGHUP before it imports the CLI: the imports take a few hundred
milliseconds, and an interrupt during them would end faber with a ``KeyboardInterrupt``
traceback (SIGINT) or with no document at all (SIGTERM). Held, the interrupt is raised as the
command's run begins and ends it the way every interrupt does: an ``INTERRUPTED`` document, exit
130, nothing done (faber_core/interrupts.py).
"""

from __future__ import annotations

import os
import sys

from faber_core import interrupts

_STANDARD_STREAMS = ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY), (2, "stderr", os.O_WRONLY))


def open_closed_standard_streams() -> None:
    """Give a standard stream its caller closed (``faber ... <&-``, a supervisor that closes them)
    /dev/null. Python leaves such a stream None, which the prompt, the request's read and every
    warning would fail on with a traceback; and the descriptor left free would be the next file
    faber opens (the config, a backup archive, a database socket), where a child process or a
    print aimed at the stream would then write."""
    for fd, name, flags in _STANDARD_STREAMS:
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        # The lower descriptors are open (or were just given /dev/null): this one is the lowest free.
        opened = os.open(os.devnull, flags)
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
        if getattr(sys, name) is None:
            mode = "r" if flags == os.O_RDONLY else "w"
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False))


def main() -> None:
    open_closed_standard_streams()
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
