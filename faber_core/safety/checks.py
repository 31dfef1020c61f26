"""The safety steps of a run, as the workflow calls them (docs/safety.md).

Deploy:  lint and staging proof (before approval: a refusal needs no one's approval and takes no
         backup) -> approval -> preflight (just before the backup and apply) -> apply under
         lock_timeout, retrying lock timeouts.
Preview: every pending migration gets its lint findings, an estimate with its basis (measured
         on a throwaway copy with ``--rehearse``), and the preflight's blockers are reported.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from pglast.parser import ParseError

from faber_core import events
from faber_core.context import RunContext
from faber_core.errors import FaberError, LintBlocked, MigrationFailed
from faber_core.migration_files import read_sql
from faber_core.models import LocalMigration, MigrationPreview, MigrationState
from faber_core.postgres.sql import client_copy, is_transactional
from faber_core.safety import lint, preflight, staging_proof
from faber_core.safety.analysis import analyse
from faber_core.safety.catalog import Catalog, find_tables
from faber_core.safety.estimate import Estimator
from faber_core.safety.models import Blocker, LintFinding, PreflightReport
from faber_core.safety.severity import Judge
from faber_core.support.node import NOT_REHEARSED
from faber_core.telemetry import step

if TYPE_CHECKING:
    from faber_core.plugins import Plugins


@dataclass
class Review:
    """What the checks found before approval, carried on to the preflight and the result."""

    sql: dict[str, str]
    """Each pending migration's SQL: its file, or what its rehearsal ran (code migrations)."""
    lint: dict[str, list[LintFinding]] = field(default_factory=dict)
    lint_not_run: dict[str, str] = field(default_factory=dict)
    """Migrations the lint could not check, with why."""
    staging_proof: dict[str, object] | None = None
    preflight: PreflightReport | None = None


def migration_sql(context: RunContext, migration: LocalMigration) -> str | None:
    """The SQL of a migration kept as a ``.sql`` file (Prisma, plain SQL); None for code migrations,
    whose SQL is only known by rehearsing them (the preview does), and for a file that is gone.

    The file must be a regular file of UTF-8 text that resolves inside the folder holding it
    (the handler has checked that folder lies in its migrations folder); otherwise ConfigError.
    It is read once per command (:meth:`RunContext.once`): the analysis before the lock, the lint and
    the preview check the same text.
    """
    if not migration.path or not migration.path.endswith(".sql"):
        return None
    return context.once(("migration sql", context.project_dir, migration.path), lambda: _read(context, migration.path))


def _read(context: RunContext, relative_path: str) -> str | None:
    path = context.project_dir / relative_path
    try:
        sql = read_sql(path, path.parent, shown=relative_path)
    except FileNotFoundError:
        return None
    context.learn_sql_passwords(sql)
    return sql


def analyse_before_lock(context: RunContext, pending: list[LocalMigration]) -> None:
    """Split and classify every pending SQL migration before the run takes its lock or a backup:
    one that cannot be analysed stops the run with nothing touched. The analysis is cached for
    the later steps (lint, preflight, estimates, apply). An engine without faber's SQL analysis
    (MySQL) leaves the SQL to its server."""
    if not context.database.engine.supports("sql_analysis"):
        return
    for migration in pending:
        sql = migration_sql(context, migration)
        if sql is None:
            continue
        shown = migration.path or migration.name
        try:
            analyse(sql)
        except ParseError as exc:
            raise _refused_before_lock(
                migration,
                f"cannot be analysed: its SQL does not parse ({context.redactor.redact(str(exc))})",
                f"Fix the SQL of {shown}, then retry",
            ) from None
        copy = client_copy(sql)
        if copy is not None:
            raise _refused_before_lock(
                migration,
                f"cannot run: statement {copy} is a COPY from STDIN or to STDOUT, whose rows only a client such "
                "as psql can send or take",
                f"In {shown}, load the rows with INSERT ... VALUES, or COPY from a file on the database server; "
                "then retry",
            )


def _refused_before_lock(migration: LocalMigration, why: str, suggestion: str) -> MigrationFailed:
    return MigrationFailed(
        f"Migration {migration.name} {why}. Nothing was applied, no lock or backup was taken",
        result={
            "failed_migration": migration.name,
            "migrations_applied_before_failure": 0,
            "rollback_initiated": False,
            "rollback_status": "not_needed",
        },
        suggestions=[suggestion],
    )


def refuse_what_the_handler_refuses(context: RunContext, plugins: Plugins, pending: list[LocalMigration]) -> None:
    """The handler's own check of the pending migrations (``faber_migration_validate``), before
    the lock and the backup: a refusal stops the run with nothing touched."""
    refusals = plugins.migration_validate(context, pending) if pending else []
    if not refusals:
        return
    first = refusals[0]
    raise MigrationFailed(
        f"The {context.tool} handler refuses migration {first.name}: {context.redactor.redact(first.reason)}. "
        "Nothing was applied, no lock or backup was taken",
        result={
            "failed_migration": first.name,
            **({"file": first.path} if first.path else {}),
            "refused": [refusal.model_dump(exclude_none=True) for refusal in refusals],
            "migrations_applied_before_failure": 0,
            "rollback_initiated": False,
            "rollback_status": "not_needed",
        },
        suggestions=[f"Fix {first.name} as the handler says, then retry"],
    )


def transactional(sql: str) -> bool | None:
    try:
        return is_transactional(sql)
    except ParseError:
        return None


def outside_a_transaction(context: RunContext, pending: list[LocalMigration]) -> set[str]:
    """The pending migrations a deploy killed inside may leave in part, which faber records before
    applying them (:mod:`faber_core.audit.unfinished`): those its handler says run outside a
    transaction (``LocalMigration.transactional`` False), and those whose SQL faber's analysis finds
    cannot run in one (``CREATE INDEX CONCURRENTLY``, a script's own ``COMMIT``), whatever the flag
    says: no handler can run such SQL in one transaction, and one that forgets the flag must not
    leave a killed deploy's work to be run again from its start. SQL the analysis finds transactional
    never overrides a handler's False: the handler knows how it runs the migration."""
    analysed = context.database.engine.supports("sql_analysis")
    return {
        migration.name
        for migration in pending
        if migration.transactional is False
        or (analysed and (sql := migration_sql(context, migration)) is not None and transactional(sql) is False)
    }


NOT_TRANSACTIONAL = (
    "{engine} commits each DDL statement on its own: if this migration fails part-way, the statements "
    "before the failure stay committed, faber reports which, and the rollback restores the backup"
)

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
"""The ORMs' own catalog lookups name these; no migration waits for a lock on them."""


# Deploy ----------------------------------------------------------------------------------


def review_before_approval(
    context: RunContext, plugins: Plugins, pending: list[LocalMigration], *, skip_staging_proof: bool
) -> Review:
    files = {m.name: sql for m in pending if (sql := migration_sql(context, m)) is not None}
    review = Review(sql=files)
    engine = context.database.engine
    if context.settings.lint != "off" and not engine.supports("lint"):
        review.lint_not_run = dict.fromkeys([m.name for m in pending], engine.unsupported["lint"])
        context.emit(events.LINT_NOT_RUN, migrations=review.lint_not_run)
    elif context.settings.lint != "off":
        with step(context, "lint"):
            code = [m.name for m in pending if m.name not in files]
            rehearsed = _rehearse_code_migrations(context, plugins, pending, code, review) if code else {}
            review.sql = {m.name: sql for m in pending if (sql := files.get(m.name, rehearsed.get(m.name))) is not None}
            if review.lint_not_run:
                context.emit(events.LINT_NOT_RUN, migrations=review.lint_not_run)
            if review.sql:
                review.lint = _lint_on_target(context, review.sql)
                context.emit(events.LINT_FINISHED, findings=_counts(review.lint), rehearsed=sorted(rehearsed))
        refuse_lint_errors(context, review.lint)
    if context.settings.requires_success_in:
        with step(context, "staging_proof"):
            review.staging_proof = staging_proof.check(context, pending, skip=skip_staging_proof)
    return review


def _rehearse_code_migrations(
    context: RunContext, plugins: Plugins, pending: list[LocalMigration], code: list[str], review: Review
) -> dict[str, str]:
    """The SQL each code migration runs, captured by the handler's preview: the pending migrations
    applied to a throwaway copy of the database, within ``lint_rehearsal_seconds``. Migrations it
    could not capture go to ``review.lint_not_run`` with the reason."""
    limit = context.settings.lint_rehearsal_seconds
    if not limit:
        review.lint_not_run = dict.fromkeys(code, "lint_rehearsal_seconds is 0: code migrations are not rehearsed")
        return {}
    bounded = dataclasses.replace(context, deadline=time.monotonic() + limit)
    context.emit(events.LINT_REHEARSING, migrations=code, limit_seconds=limit)
    try:
        previews = plugins.migration_preview(bounded, pending)
    except FaberError as exc:
        reason = f"the rehearsal that captures their SQL did not run: {context.redactor.redact(exc.message)}"
        review.lint_not_run = dict.fromkeys(code, reason)
        return {}
    captured = {}
    for item in previews:
        if item.name not in code:
            continue
        skipped = next((note for note in item.notes if note.startswith(NOT_REHEARSED)), None)
        if skipped:
            review.lint_not_run[item.name] = skipped
        else:
            captured[item.name] = item.sql
    for name in code:
        if name not in captured and name not in review.lint_not_run:
            review.lint_not_run[name] = "the handler's preview did not describe it"
    return captured


def _lint_on_target(context: RunContext, sources: dict[str, str]) -> dict[str, list[LintFinding]]:
    with ExitStack() as stack:
        try:
            conn = stack.enter_context(context.database.session())
        except psycopg.Error:
            # Without the target's statistics nothing is judged small: findings keep their severity.
            tables = Catalog(None, context.database.schema, context.database.engine)
            return lint_sources(context, sources, tables, None)
        tables = Catalog(conn, context.database.schema, context.database.engine)
        return lint_sources(context, sources, tables, _version(conn))


def lint_sources(
    context: RunContext, sources: dict[str, str], tables: Catalog, version: str | None
) -> dict[str, list[LintFinding]]:
    """Lint ``sources`` (name -> SQL, in apply order) and judge each finding by its table's size in
    ``tables`` and by what the earlier pending migrations create."""
    findings = lint.lint_migrations(
        {name: (sql, transactional(sql)) for name, sql in sources.items()},
        project_dir=context.project_dir,
        server_version=version,
    )
    judge = Judge(
        tables,
        tables.index_table,
        tables.exists,
        default_schema=context.database.schema,
        small_table_rows=context.settings.lint_small_table_rows,
    )
    return {
        name: [f.model_copy(update={"statement": context.redactor.redact(f.statement or "") or None}) for f in items]
        for name, items in judge.judge(sources, findings).items()
    }


def refuse_lint_errors(context: RunContext, findings: dict[str, list[LintFinding]]) -> None:
    errors = {name: [f for f in items if f.severity == "error"] for name, items in findings.items()}
    errors = {name: items for name, items in errors.items() if items}
    if context.settings.lint != "block" or not errors:
        return
    first_name, first = next(iter(errors.items()))
    count = sum(len(items) for items in errors.values())
    raise LintBlocked(
        f"The lint found {count} error(s) (lock risks or breaking changes) in {len(errors)} pending migration(s), "
        f"e.g. {first_name} line {first[0].line}: {first[0].rule}. Nothing was applied",
        result={"lint": {name: [f.model_dump() for f in items] for name, items in findings.items() if items}},
        suggestions=[
            "Rewrite the statements as each finding's help says (a new migration, if this one was applied elsewhere)",
            "Or, after review, acknowledge a finding in the migration on the line before the statement: "
            "-- squawk-ignore <rule> (in a TypeORM or Sequelize migration: at the start of the query's SQL string)",
            f'Or set "lint": "warn" for {context.environment} to report findings without blocking',
        ],
    )


def preflight_before_apply(context: RunContext, review: Review) -> PreflightReport | None:
    announce_estimates(context, review)
    policy = context.settings.preflight
    if policy == "off":
        return None
    with step(context, "preflight"), context.database.session() as conn:
        tables, check = context.database.engine.preflight(context, conn, list(review.sql.values()))
        blockers, waited = preflight.enforce(
            policy,
            check,
            wait_seconds=context.settings.preflight_wait_seconds,
            environment=context.environment,
            tables=tables,
            release_hint=context.database.engine.lock_release_hint,
            on_wait=lambda found: context.emit(events.PREFLIGHT_WAITING, blockers=[b.model_dump() for b in found]),
        )
        review.preflight = PreflightReport(policy=policy, tables=tables, blockers=blockers, waited_seconds=waited)
        context.emit(events.PREFLIGHT_FINISHED, **review.preflight.model_dump())
    return review.preflight


def announce_estimates(context: RunContext, review: Review) -> None:
    """Each SQL migration's estimated duration (``apply.estimated``), so the progress of a long
    migration shows its elapsed time against it. Statistics that cannot be read leave it out: an
    estimate is never worth failing a deploy for."""
    sources = {name: sql for name, sql in review.sql.items() if sql}
    engine = context.database.engine
    if not sources or not engine.supports("estimates"):
        return
    try:
        with context.database.session() as conn:
            tables = Catalog(conn, context.database.schema, engine)
            estimator = Estimator(tables)
            # One catalog query for every table the migrations name, not one per migration.
            effects = [effect for sql in sources.values() for effect in engine.statement_effects(sql) or []]
            tables([effect.table for effect in effects if effect.table])
            estimates = {name: estimator.estimate(sql).seconds for name, sql in sources.items()}
    except engine.driver_error:
        return
    context.emit(events.APPLY_ESTIMATED, estimates=estimates)


# Preview ---------------------------------------------------------------------------------


def annotate_preview(
    context: RunContext,
    plugins: Plugins,
    state: MigrationState,
    previews: list[MigrationPreview],
    *,
    rehearse: bool,
) -> PreflightReport | None:
    """Fill in each preview's lint and estimate (in place); return the preflight's report. On an
    engine without some of these checks, each preview says which did not run, and a migration
    outside a transaction there says what a failure part-way leaves."""
    engine = context.database.engine
    for item in previews:
        if not engine.transactional_ddl and not item.transactional:
            item.notes.append(NOT_TRANSACTIONAL.format(engine=engine.label))
        note = engine.preview_note()
        item.notes += [note] if note else []
    with context.database.session() as conn:
        tables = Catalog(conn, context.database.schema, engine)
        if engine.supports("estimates"):
            _estimate(context, conn, state, previews, tables)
        if engine.supports("lint") and context.settings.lint != "off":
            _lint_previews(context, previews, tables, _version(conn))
        report = _preview_preflight(context, conn, previews)
    if rehearse:
        _measure(context, plugins, state, previews)
    return report


def _estimate(
    context: RunContext,
    conn: Any,
    state: MigrationState,
    previews: list[MigrationPreview],
    tables: Catalog,
) -> None:
    estimator = Estimator(tables)
    estimator.calibrate(calibration_samples(context, conn, state))
    for item in previews:
        if item.basis is None and item.sql:
            estimate = estimator.estimate(item.sql)
            item.estimated_duration_seconds, item.basis = estimate.seconds, estimate.basis


def calibration_samples(context: RunContext, conn: Any, state: MigrationState) -> list[tuple[str, float]]:
    """(SQL, measured seconds) of the migrations faber applied to this database before."""
    local = {(m.name, m.checksum): m for m in state.local}
    samples = []
    engine = context.database.engine
    try:
        recorded = engine.successful_migrations(conn, context.config.database.faber_schema, context.environment)
    except engine.driver_error:
        return []
    for name, checksum, duration in recorded:
        migration = local.get((name, checksum))
        sql = migration_sql(context, migration) if migration else None
        if sql and duration:
            samples.append((sql, duration))
    return samples


def _lint_previews(
    context: RunContext,
    previews: list[MigrationPreview],
    tables: Catalog,
    version: str | None,
) -> None:
    findings = lint_sources(context, {p.name: p.sql for p in previews if p.sql}, tables, version)
    for item in previews:
        item.lint = findings.get(item.name, [])
        errors = sum(1 for f in item.lint if f.severity == "error")
        if errors and context.settings.lint == "block":
            item.notes.append(
                f"lint: {errors} error(s) (lock risks or breaking changes) would block the deploy to "
                f"{context.environment}"
            )


def _preview_preflight(
    context: RunContext, conn: psycopg.Connection, previews: list[MigrationPreview]
) -> PreflightReport | None:
    policy = context.settings.preflight
    if policy == "off":
        return None
    tables, check = context.database.engine.preflight(context, conn, [p.sql for p in previews if p.sql])
    return PreflightReport(policy=policy, tables=tables, blockers=check())


def _measure(context: RunContext, plugins: Plugins, state: MigrationState, previews: list[MigrationPreview]) -> None:
    from faber_core.safety.rehearse import measure

    pending = _rehearsable(context, state.pending_migrations(), previews)
    if not pending:
        return
    with step(context, "rehearse"):
        measured = measure(context, plugins, pending)
    for item in previews:
        if item.name in measured.durations:
            item.estimated_duration_seconds = measured.durations[item.name]
            item.basis = "measured: applied to a throwaway copy of the database with its data"
        elif measured.failure is not None and item.name == measured.failure.name:
            item.notes.append(f"rehearsal: this migration failed on the copy: {measured.failure.error}")
            item.rehearsal_error = measured.failure.error
            item.rehearsal_failure = measured.failure
    failed = measured.failure.name if measured.failure else None
    context.emit(events.REHEARSAL_MEASURED, durations=measured.durations, failed=failed)


def _rehearsable(
    context: RunContext, pending: list[LocalMigration], previews: list[MigrationPreview]
) -> list[LocalMigration]:
    """The pending migrations up to the first that changes something outside its database: the
    copy is on the target's server, so there it would create the real roles, set the real
    database's settings (which it names). That one and those after it keep their estimates, and
    say why they were not measured."""
    sql_of = {item.name: item.sql for item in previews}
    for index, migration in enumerate(pending):
        outside = context.database.engine.outside_its_database(sql_of.get(migration.name) or "", context.database.name)
        if outside is None:
            continue
        for item in previews:
            if item.name in {m.name for m in pending[index:]}:
                item.notes.append(
                    f"{NOT_REHEARSED}: {migration.name} changes something outside its database ({outside}): "
                    "on the copy, on the same server, it would change the real one"
                )
        return pending[:index]
    return pending


# Shared ----------------------------------------------------------------------------------


def _version(conn: psycopg.Connection) -> str:
    number = conn.info.server_version
    return f"{number // 10000}.{number % 10000}"


def touched_tables(
    context: RunContext, conn: psycopg.Connection, sources: Iterable[str]
) -> tuple[dict[int, str], bool]:
    """oid -> name of the existing tables the SQL names, and whether it builds an index concurrently."""
    names = []
    concurrent = False
    for sql in sources:
        try:
            effects = analyse(sql)
        except ParseError:
            continue
        distinct = {id(effect): effect for effect in effects}.values()  # one per statement shape
        names += [table for effect in distinct for table in effect.tables_touched if table[0] not in SYSTEM_SCHEMAS]
        concurrent = concurrent or any(e.kind == "index" and e.concurrent for e in distinct)
    found = find_tables(conn, list(dict.fromkeys(names)), context.database.schema)
    return {stats.oid: stats.name for stats in found.values()}, concurrent


def find_blockers(
    context: RunContext, conn: psycopg.Connection, tables: dict[int, str], concurrent: bool
) -> list[Blocker]:
    return preflight.find_blockers(
        conn,
        tables,
        long_transaction_seconds=context.settings.long_transaction_seconds,
        concurrent_index_build=concurrent,
        redactor=context.redactor,
    )


def _counts(findings: dict[str, list[LintFinding]]) -> dict[str, int]:
    severities = [f.severity for items in findings.values() for f in items]
    return {
        "errors": severities.count("error"),
        "warnings": severities.count("warning"),
        "informational": severities.count("info"),
    }
