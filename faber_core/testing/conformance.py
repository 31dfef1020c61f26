"""Contract tests for faber plugins: subclass them in your plugin's tests, and your handler or
backup provider is held to what faber relies on, against a real PostgreSQL.

A handler::

    from faber_core.testing.conformance import ContractMigration, HandlerContract

    class TestMyToolContract(HandlerContract):
        @pytest.fixture
        def contract_plugins(self, plugin_manager):
            plugin_manager.register(my_plugin, name="mytool")
            return Plugins(plugin_manager)

        @pytest.fixture
        def contract_context(self, faber_project, database_url, monkeypatch, run_context):
            def make(migrations: list[ContractMigration], events: list, **settings) -> RunContext:
                ...  # write the migrations in your tool's format, in this order; a config whose
                ...  # environment reads database_url and takes **settings; return its RunContext
            return make

A test may call ``make`` again with the same migrations followed by more (to have some applied and
some pending: a tool may only apply all its pending migrations at once): write them into the same
project directory, the same migration under the same name.

A backup provider::

    class TestMyProviderContract(BackupProviderContract):
        @pytest.fixture
        def contract_plugins(self, plugin_manager): ...

        @pytest.fixture
        def contract_context(self, ...):
            def make(events: list) -> RunContext: ...  # an environment backed up by your provider
            return make

Both use the fixtures of :mod:`faber_core.testing.fixtures` (``database_url`` is a fresh database
per test whose URL carries a canary password). Each test uses one database and a few small
migrations. Class attributes describe what the tool can do, so a contract is never weakened
silently: set them to what your tool really does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pydantic import BaseModel

from faber_core import events as kinds
from faber_core.context import LockCheck, RunContext
from faber_core.engines import LOCK_LOST
from faber_core.errors import LockLost
from faber_core.models import AuditEvent, BackupRecord, MigrationState
from faber_core.plugins import Plugins
from faber_core.safety.timeouts import LOCK_NOT_AVAILABLE, apply_with_lock_retry
from faber_core.testing.fixtures import CANARY_PASSWORD


@dataclass(frozen=True)
class ContractMigration:
    """A migration the contract needs, for the ``contract_context`` fixture to write in its tool's
    format: its ``statements`` run in order; ``transactional=False`` asks for a migration the tool
    runs outside a transaction (TypeORM ``transaction = false``; a Prisma migration is so when its
    SQL cannot run in one, which the contract's statements ensure)."""

    slug: str
    statements: tuple[str, ...]
    transactional: bool = True

    @property
    def script(self) -> str:
        """The statements as one SQL script, for tools whose migrations are ``.sql`` files."""
        return "".join(f"{statement};\n" for statement in self.statements)


FAILING_STATEMENT = "SELECT 1 / 0"
"""Fails with division_by_zero (SQLSTATE 22012)."""


def table_exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]


def user_objects(url: str) -> list[tuple[Any, ...]]:
    """Every relation outside the system schemas, with the rows of each table: what a write changes."""
    with psycopg.connect(url, autocommit=True) as conn:
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            " ORDER BY 1, 2"
        ).fetchall()
        found = []
        for schema, name, kind in relations:
            rows = None
            if kind in ("r", "p"):
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
                rows = conn.execute(query).fetchone()[0]
            found.append((schema, name, kind, rows))
        return found


def assert_no_canary(*found: object) -> None:
    """Nothing a plugin returned or emitted holds the password of the database URL."""
    for item in found:
        text = item.model_dump_json() if isinstance(item, BaseModel) else json.dumps(item, default=str)
        assert CANARY_PASSWORD not in text, f"the database password leaked into {text[:200]}"


class HandlerContract:
    """What faber relies on from a migration handler (see faber_core.hookspecs)."""

    transactional_migrations = True
    """The tool runs a migration in a transaction with its bookkeeping row (False: Sequelize)."""
    non_transactional_migrations = True
    """The tool can run a migration outside a transaction (False: a tool that always wraps one)."""
    failed_migrations_recorded = True
    """The tool's history records a migration that failed outside a transaction, and its plugin's
    ``faber_migration_resolve`` marks it (False: Sequelize and TypeORM record a migration only once it
    has run; a plugin without ``faber_migration_resolve`` is taken as False)."""

    @pytest.fixture
    def contract_plugins(self) -> Plugins:
        raise NotImplementedError("Override contract_plugins: a Plugins with your plugin registered")

    @pytest.fixture
    def contract_context(self) -> Callable[..., RunContext]:
        raise NotImplementedError("Override contract_context: make(migrations, events, **settings) -> RunContext")

    def test_status_and_preview_never_write(self, contract_plugins, contract_context, database_url):
        events: list[AuditEvent] = []
        first = ContractMigration("create_items", ("CREATE TABLE items (id int)",))
        second = ContractMigration("fill_items", ("INSERT INTO items VALUES (1)",))
        context = contract_context([first], events)
        empty = user_objects(database_url)

        state = contract_plugins.migration_status(context)

        assert user_objects(database_url) == empty, "status changed an empty database"
        assert len(state.local) == 1 and state.pending == [state.local[0].name] and state.applied == []
        contract_plugins.migration_apply(context, state.pending_migrations())
        applied = user_objects(database_url)
        context = contract_context([first, second], events)
        state = contract_plugins.migration_status(context)
        previews = contract_plugins.migration_preview(context, state.pending_migrations())

        assert user_objects(database_url) == applied, "status or preview changed the database"
        assert state.applied == [state.local[0].name] and [p.name for p in previews] == [state.local[1].name]
        assert_no_canary(state, *previews, *[e.data for e in events])

    def test_a_failing_migration_is_returned_and_only_what_committed_is_recorded(
        self, contract_plugins, contract_context, database_url
    ):
        events: list[AuditEvent] = []
        migrations = [
            ContractMigration("create_kept", ("CREATE TABLE kept (id int)",)),
            ContractMigration("broken", ("CREATE TABLE half_done (id int)", FAILING_STATEMENT)),
            ContractMigration("never_run", ("CREATE TABLE never_run (id int)",)),
        ]
        context = contract_context(migrations, events)
        local = [m.name for m in contract_plugins.migration_status(context).local]

        outcome = contract_plugins.migration_apply(
            context, contract_plugins.migration_status(context).pending_migrations()
        )
        state = contract_plugins.migration_status(context)

        assert [m.name for m in outcome.applied] == local[:1]
        assert outcome.failure is not None and outcome.failure.name == local[1] and outcome.failure.error
        assert outcome.failure.sqlstate == "22012", "give PostgreSQL's SQLSTATE of the failing statement"
        assert state.applied == local[:1] and local[2] in state.pending
        assert table_exists(database_url, "kept") and not table_exists(database_url, "never_run")
        if self.transactional_migrations:
            assert outcome.failure.transaction_rolled_back, "the failed migration's transaction must roll back"
            assert not table_exists(database_url, "half_done"), "a rolled-back migration left a table behind"
        else:
            assert not outcome.failure.transaction_rolled_back, "without a transaction, say that nothing rolled back"
        assert [e.data["name"] for e in events if e.kind == kinds.MIGRATION_APPLIED] == local[:1]
        assert_no_canary(outcome, state, *[e.data for e in events])

    def test_a_failure_outside_a_transaction_is_recorded_and_resolvable(
        self, contract_plugins, contract_context, database_url
    ):
        if not self.non_transactional_migrations:
            pytest.skip("the tool runs every migration in a transaction")
        events: list[AuditEvent] = []
        statements = ("CREATE TABLE indexed (id int)", "CREATE INDEX CONCURRENTLY indexed_id ON indexed (id)")
        context = contract_context([ContractMigration("concurrent", (*statements, FAILING_STATEMENT), False)], events)
        pending = contract_plugins.migration_status(context).pending_migrations()

        outcome = contract_plugins.migration_apply(context, pending)
        state = contract_plugins.migration_status(context)

        assert outcome.failure is not None and outcome.failure.name == pending[0].name
        assert not outcome.failure.transaction_rolled_back, "statements before the failure committed: say so"
        assert table_exists(database_url, "indexed")
        if self.failed_migrations_recorded and contract_plugins.pm.hook.faber_migration_resolve.get_hookimpls():
            assert state.failed == [pending[0].name], "record the failed migration so a person resolves it"
            resolved = contract_plugins.migration_resolve(context, pending[0].name, "rolled_back")
            assert resolved.failed == [] and pending[0].name in resolved.pending
        else:
            assert state.failed == [] and pending[0].name in state.pending
        assert_no_canary(outcome, state, *[e.data for e in events])

    def test_a_lock_timeout_is_reported_with_its_sqlstate_and_retried(
        self, contract_plugins, contract_context, database_url
    ):
        events: list[AuditEvent] = []
        migrations = [
            ContractMigration("create_busy", ("CREATE TABLE busy (id int)",)),
            ContractMigration("alter_busy", ("ALTER TABLE busy ADD COLUMN note text",)),
        ]
        context = contract_context(migrations[:1], events)
        contract_plugins.migration_apply(context, contract_plugins.migration_status(context).pending_migrations())
        retry = {"retries": 1, "backoff_seconds": 0, "max_backoff_seconds": 0}
        context = contract_context(migrations, events, lock_timeout_seconds=0.2, lock_retry=retry)
        [second] = contract_plugins.migration_status(context).pending_migrations()

        with psycopg.connect(database_url) as holder:
            holder.execute("LOCK TABLE busy IN ACCESS SHARE MODE")  # as a long report query would

            def release(seconds: float) -> None:
                holder.rollback()

            outcome = apply_with_lock_retry(
                context, lambda remaining: contract_plugins.migration_apply(context, remaining), [second], sleep=release
            )
            holder.rollback()

        timed_out = [e for e in events if e.kind in (kinds.MIGRATION_RETRY, kinds.MIGRATION_RETRY_REFUSED)]
        assert len(timed_out) == 1 and timed_out[0].data["name"] == second.name
        if self.transactional_migrations:
            assert timed_out[0].kind == kinds.MIGRATION_RETRY, "a lock timeout must come back as SQLSTATE 55P03"
            assert outcome.failure is None and [m.name for m in outcome.applied] == [second.name]
        else:
            assert outcome.failure is not None and outcome.failure.sqlstate == LOCK_NOT_AVAILABLE
        assert_no_canary(outcome, *[e.data for e in events])


class BackupProviderContract:
    """What faber relies on from a backup provider (see faber_core.hookspecs)."""

    restores_in_place = True
    """The restore brings the environment's database back where it is (False: a provider that
    restores to a new server, which the test cannot inspect, e.g. rds-snapshot on a moto server)."""

    @pytest.fixture
    def contract_plugins(self) -> Plugins:
        raise NotImplementedError("Override contract_plugins: a Plugins with your provider registered")

    @pytest.fixture
    def contract_context(self) -> Callable[..., RunContext]:
        raise NotImplementedError("Override contract_context: make(events) -> RunContext")

    def test_a_backup_is_listed_and_its_restore_removes_everything_since_but_fabers_schema(
        self, contract_plugins, contract_context, database_url
    ):
        events: list[AuditEvent] = []
        context = contract_context(events)
        schema = context.config.database.faber_schema
        marker = f"{schema}.faber_contract_marker"
        if self.restores_in_place:
            _execute(
                database_url,
                f"CREATE TABLE kept (id int); INSERT INTO kept VALUES (1), (2);"
                f" CREATE SCHEMA {schema}; CREATE TABLE {marker} (id int)",
            )
        fingerprint = MigrationState(tool="contract", local=[], records=[]).applied_fingerprint()

        record = contract_plugins.backup_create(context, "contract", fingerprint)
        listed = contract_plugins.backup_list(context)

        assert record.status == "available" and record.provider == context.settings.backup.provider
        assert [b.id for b in listed if b.id == record.id and b.status == "available"] == [record.id]
        json.dumps(record.provider_data)  # JSON values only, so the record can be stored and shown
        if self.restores_in_place:
            _execute(
                database_url,
                f"INSERT INTO kept VALUES (3); CREATE TABLE added (id int); CREATE SCHEMA extra;"
                f" CREATE TABLE extra.t (id int); INSERT INTO {marker} VALUES (1)",
            )

        outcome = contract_plugins.backup_restore(context, _listed(listed, record))

        assert outcome.status == "success" and outcome.backup_id == record.id
        if self.restores_in_place:
            assert not outcome.original_unchanged
            with psycopg.connect(database_url) as conn:
                assert conn.execute("SELECT count(*) FROM kept").fetchone()[0] == 2
                assert conn.execute("SELECT to_regclass('added'), to_regnamespace('extra')").fetchone() == (None, None)
                assert conn.execute(f"SELECT count(*) FROM {marker}").fetchone()[0] == 1, "faber's schema must stay"
        else:
            assert outcome.endpoint, "say where the restored database answers"
        assert_no_canary(record, *listed, outcome, *[e.data for e in events])

    def test_a_restore_whose_lock_is_lost_stops_before_it_commits(
        self, contract_plugins, contract_context, database_url
    ):
        events: list[AuditEvent] = []
        context = contract_context(events)
        if self.restores_in_place:
            _execute(database_url, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)")
        fingerprint = MigrationState(tool="contract", local=[], records=[]).applied_fingerprint()
        record = contract_plugins.backup_create(context, "contract", fingerprint)
        listed = contract_plugins.backup_list(context)
        if self.restores_in_place:
            _execute(database_url, "INSERT INTO kept VALUES (2); CREATE TABLE added (id int)")
        before = user_objects(database_url)
        checks = _lock_reported_lost(context)

        try:
            contract_plugins.backup_restore(context, _listed(listed, record))
        except LockLost as lost:
            assert checks, "raise the LockLost that context.restore_committing() raised, not one of your own"
            assert_no_canary(lost.message, *[e.data for e in events])
        else:
            pytest.fail(
                "the restore went on although faber's lock was lost: call context.restore_committing() right "
                "before your commit point and let its LockLost propagate (with in_transaction=True, run the "
                "check's statement inside your transaction before its COMMIT and raise check.lost() when it "
                "fails); see docs/writing-a-backup-provider.md"
            )
        assert user_objects(database_url) == before, "the restore changed the database after faber's lock was lost"


def _lock_reported_lost(context: RunContext) -> list[str]:
    """Has ``context.restore_committing`` report faber's lock lost, in both of its forms, as the core
    does when the lock's session was ended during the restore; returns which form the provider used."""
    used: list[str] = []

    def lost() -> LockLost:
        return LockLost("faber's lock on the database was lost during the restore (the contract's check)")

    def check_round_trip() -> None:
        used.append("round trip")
        raise lost()

    def lost_in_transaction() -> LockLost:
        used.append("in transaction")
        return lost()

    context.before_restore_commit.append(check_round_trip)
    # Fails as the engine's check does when the lock is lost: its message saying LOCK_LOST.
    statement = sql.SQL("SELECT {}::int").format(sql.Literal(LOCK_LOST)).as_string()
    context.lock_check_in_restore = lambda: LockCheck(statement, lost_in_transaction)
    return used


def _listed(listed: list[BackupRecord], record: BackupRecord) -> BackupRecord:
    """The record as the listing gives it: what `faber rollback` restores from."""
    return next(b for b in listed if b.id == record.id)


def _execute(url: str, statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statements)
