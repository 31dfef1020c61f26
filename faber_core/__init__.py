"""faber: deploy database migrations safely across environments."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """``hookimpl``, the marker for plugin hook implementations (``@hookimpl def
    faber_migration_tools(): ...``), made on first use. Importing this package comes first in the
    ``faber`` command, before it holds interrupts (faber_core/command.py): pluggy, with the
    standard modules it imports, would lengthen the moment in which Ctrl-C ends faber with a
    traceback instead of its ``INTERRUPTED`` document."""
    if name != "hookimpl":
        raise AttributeError(f"module 'faber_core' has no attribute {name!r}")
    import pluggy

    marker = pluggy.HookimplMarker("faber")
    globals()["hookimpl"] = marker
    return marker
