"""What a command that runs on a whole fleet is given (``--concurrency``, ``--shard``), and whether
the environment it names is a fleet (docs/fleet.md).

Apart from :mod:`faber_core.targets`, so that a command on one database (``faber status ENV``)
imports neither the targets' sources nor :mod:`faber_core.fleet` (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faber_core.config import EnvironmentSettings, load_config
from faber_core.errors import ConfigError


@dataclass
class FleetOptions:
    concurrency: int | None = None
    """None: not given (``faber_core.fleet.DEFAULT_CONCURRENCY``)."""
    shard: str | None = None
    """``I/N`` (``--shard``); None: the Kubernetes Indexed Job's shard when run in one, else the whole fleet."""


def fleet_settings(project_dir: Path, environment: str, options: FleetOptions) -> EnvironmentSettings | None:
    """The settings of the fleet ``environment`` names; None when it names one database (or one
    target, ``FLEET/TARGET``), refusing fleet ``options`` then. Only a fleet imports :mod:`faber_core.fleet`."""
    settings = None if "/" in environment else load_config(project_dir).environment(environment)
    if settings is not None and settings.targets is not None:
        return settings
    given = [
        flag
        for flag, value in (("--concurrency", options.concurrency), ("--shard", options.shard))
        if value is not None
    ]
    if given:
        raise ConfigError(
            f"{' and '.join(given)} apply to a fleet environment (one with targets); {environment} is one database",
            suggestions=["Leave them out, or see docs/fleet.md to configure a fleet"],
        )
    return None
