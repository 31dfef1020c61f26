"""The rds-snapshot provider against faber's contract kit, on the moto server.

moto keeps no data in its instances, so the restore is checked as the API sees it (a snapshot
listed as available, a restore reporting where the database answers), not row by row.
"""

from __future__ import annotations

import pytest
from faber_core.context import RunContext
from faber_core.plugins import Plugins
from faber_core.testing.conformance import BackupProviderContract


class TestRdsSnapshotContract(BackupProviderContract):
    restores_in_place = False

    @pytest.fixture
    def contract_plugins(self, rds_plugins) -> Plugins:
        return rds_plugins

    @pytest.fixture
    def contract_context(self, rds_context, rds_instance):
        def make(events: list) -> RunContext:
            return rds_context(events)

        return make
