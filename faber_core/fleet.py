"""Fleet deploys: one command migrates every database of a fleet environment (docs/fleet.md).

A fleet deploy is the single-database deploy (:func:`faber_core.workflow.migrate`) run once per
target, each in a context of its own (its own health checks, backup, lock, apply, verification,
rollback, audit events and history row), in this order:

1  find the targets (:mod:`faber_core.targets`) and take this shard's share
2  survey: read each target's migration status; up-to-date targets are done (no lock, no backup);
   a fleet of one wave that asks nobody reads each on its way to its deploy (:func:`read_on_the_way`)
3  dry run: say how many targets need which migrations, and stop
4  approval, once for the whole fleet (protected environments)
5  the canary, then each wave, of the targets not up to date; a wave starts only when the
   previous one succeeded; ``on_failure`` says whether a failure stops the rest of its wave
6  one document for the fleet: a row per target

Targets run on threads of one process, at most ``concurrency`` at once. What a target's deploy
shares with the others is thread-safe: the redactor (locked; it learns every URL before the first
target starts), the plugin manager (read-only), the audit log (one ``O_APPEND`` write per event),
the history and span bookkeeping (keyed by each target's run id), and the fleet's progress lines
(locked). Each worker thread waits for the programs it starts (pg_dump, psql), as the
``PR_SET_PDEATHSIG`` note in :mod:`faber_core.processes` requires, and signal handlers stay with
the main thread, which waits for the workers: after Ctrl-C or SIGTERM no further target starts,
the running ones finish, and the fleet's ``INTERRUPTED`` document has a row per target.
"""

from __future__ import annotations

import datetime as dt
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from opentelemetry import context as otel_context
from pydantic import BaseModel, Field

from faber_core.config import EnvironmentSettings
from faber_core.errors import (
    ApprovalRequired,
    ConfigError,
    FaberError,
    Interrupted,
    MigrationFailed,
    exit_code_for,
)
from faber_core.fleet_options import FleetOptions
from faber_core.interrupts import signal_name
from faber_core.model_base import build_deferred_models
from faber_core.models import InterruptedRestore, LeftoverDatabase, MigrationState
from faber_core.render import escape_controls
from faber_core.results import DeployResult, ErrorDocument, Success
from faber_core.secrets import Redactor
from faber_core.targets import Shard, Target, discover_targets, parse_shard, shard_from_job, url_variables

if TYPE_CHECKING:
    from faber_core.api import Document
    from faber_core.context import RunContext
    from faber_core.plugins import Plugins
    from faber_core.workflow import DeployOptions

DEFAULT_CONCURRENCY = 4
"""Targets deployed at once unless --concurrency says otherwise: a few, so a fleet does not
flood a shared server with backups and migrations."""
MAX_CONCURRENCY = 64

TargetStatus = Literal["deployed", "up_to_date", "pending", "failed", "not_attempted"]


# The fleet's document -------------------------------------------------------------------


class TargetError(BaseModel):
    """Why a target failed: its own error document, in short."""

    code: str
    message: str
    exit_code: int
    suggestions: list[str] = Field(default_factory=list)
    rollback_status: str | None = None


class TargetReport(BaseModel):
    """One row of the fleet's document."""

    name: str
    status: TargetStatus
    wave: int | None = Field(None, description="The wave the target was deployed in (1 is the canary, if any).")
    pending: list[str] = Field(default_factory=list, description="Migrations pending when the fleet started.")
    failed_migrations: list[str] = Field(default_factory=list, description="Recorded as failed in the database.")
    applied_count: int | None = Field(None, description="Migrations recorded as applied when the fleet started.")
    migrations_applied: list[str] = Field(
        default_factory=list, description="Committed by this run (for a failed target: before it failed)."
    )
    migrations_rolled_back: list[str] = Field(
        default_factory=list,
        description="Of migrations_applied, those the failed target's automatic rollback undid (restored its backup).",
    )
    backup_id: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    duration_seconds: float | None = None
    error: TargetError | None = None
    leftover_databases: list[LeftoverDatabase] = Field(
        default_factory=list,
        description="faber status: databases killed runs left on the target's server (as for one database).",
    )
    interrupted_restores: list[InterruptedRestore] = Field(
        default_factory=list, description="faber status: restores a kill left half done in the target."
    )


class FleetResult(BaseModel):
    targets_total: int = Field(description="Targets of the whole fleet, before sharding.")
    shard: str | None = Field(None, description="This run's shard, I/N, when sharded.")
    concurrency: int
    on_failure: Literal["stop", "continue"]
    waves: int = Field(description="Waves the targets to deploy were split into.")
    summary: dict[str, int] = Field(description="Targets by status.")
    migrations: dict[str, int] = Field(
        default_factory=dict, description="Pending migrations, with how many targets need each."
    )
    total_duration_seconds: float
    interrupted_by: Literal["SIGINT", "SIGTERM"] | None = Field(
        None, description="The signal that stopped the fleet from starting more targets."
    )
    targets: list[TargetReport]


class FleetFailed(FaberError):
    """Some targets failed. The code (and so the exit code) is the first failing target's, in the
    fleet's order: docs/exit-codes.md."""

    def __init__(self, code: str, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.code = code


# Opening a fleet -------------------------------------------------------------------------


@dataclass
class Fleet:
    """A fleet environment, its targets found and this shard's share taken."""

    project_dir: Path
    environment: str
    settings: EnvironmentSettings
    targets: list[Target]
    targets_total: int
    url_variables: frozenset[str]
    """The variables holding the URLs of every target of the fleet, this shard's or not."""
    shard: Shard | None
    concurrency: int
    redactor: Redactor


def open_fleet(
    project_dir: Path, environment: str, settings: EnvironmentSettings, redactor: Redactor, options: FleetOptions
) -> Fleet:
    """The fleet ``environment`` names (its ``settings``: :func:`faber_core.fleet_options.fleet_settings`)."""
    concurrency = options.concurrency or DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    everything = discover_targets(project_dir, environment, settings, redactor)
    # An empty --shard (an unset variable) is refused, not taken for the whole fleet.
    shard = parse_shard(options.shard) if options.shard is not None else shard_from_job()
    targets = [t for t in everything if shard is None or shard.takes(t.name)]
    return Fleet(
        project_dir,
        environment,
        settings,
        targets,
        len(everything),
        url_variables(everything),
        shard,
        concurrency,
        redactor,
    )


# Running the targets ---------------------------------------------------------------------

RunTarget = Callable[[str, Target, Callable[["RunContext", "Plugins"], Success]], "Document"]
"""``run_target(operation, target, body)`` runs ``body`` on one target as a command of its own,
named ``FLEET/TARGET`` (:func:`faber_core.api.run_command`)."""


@dataclass
class Runner:
    fleet: Fleet
    run_target: RunTarget
    progress: FleetProgress


def deploy(runner: Runner, plugins: Plugins, options: DeployOptions) -> Success:
    """``faber migrate FLEET``: every target not up to date, wave by wave."""
    from faber_core.workflow import migrate

    fleet = runner.fleet
    if options.rehearse:
        raise ConfigError(
            "--rehearse measures one database's migrations on a copy of it; a fleet has many",
            suggestions=[f"Rehearse on one target: faber migrate {fleet.environment}/TARGET --dry-run --rehearse"],
        )
    started = time.monotonic()
    on_failure = on_failure_of(fleet)
    runner.progress.started(fleet, "Fleet Preview" if options.dry_run else "Fleet Deploy")
    surveyed: dict[str, TargetReport] = {}
    streamed = read_on_the_way(fleet, options)
    try:
        if streamed:
            waves = [fleet.targets] if fleet.targets else []
        else:
            survey(runner, surveyed)
            to_deploy = [t for t in fleet.targets if surveyed[t.name].status in ("pending", "failed")]
            waves = split_into_waves(to_deploy, fleet.settings)
            if options.dry_run:
                return preview(fleet, surveyed, len(waves), on_failure, time.monotonic() - started)
            if to_deploy:
                options = approve(fleet, options, len(to_deploy))
    except KeyboardInterrupt as interrupt:  # reading the statuses, or at the approval prompt
        reports = {t.name: not_attempted(surveyed.get(t.name, unread(t.name)), None) for t in fleet.targets}
        result = fleet_result(fleet, reports, 0, on_failure, time.monotonic() - started)
        raise fleet_interrupted(fleet, result, interrupt) from None
    if streamed:
        runner.progress.line("… Deploying each target not up to date, once its status is read")
    else:
        runner.progress.line(
            f"✓ {len(fleet.targets) - len(to_deploy)} up to date, {len(to_deploy)} to deploy"
            + (f" in {len(waves)} wave(s)" if len(waves) > 1 else "")
        )

    def deploy_one(target: Target, go_on: Callable[[], bool]) -> Document:
        def body(context: RunContext, plugins_: Plugins) -> Success:
            if not streamed:
                return migrate(context, plugins_, options)
            found = read_target(context, plugins_, checks_skipped=options.skip_health_check)
            surveyed[target.name] = surveyed_report(target.name, found)
            if surveyed[target.name].status == "up_to_date" or not go_on():
                return Success(operation="deploy-migrations", environment=context.environment, result=found, message="")
            runner.progress.line(f"… {target.name}: deploying {len(found.state.pending)} migration(s)")
            return migrate(context, plugins_, options, analysed=found.state)

        return runner.run_target("deploy-migrations", target, body)

    reports, interrupt = run_waves(runner, waves, deploy_one, surveyed, on_failure)
    waves_run = len(waves) if not streamed else int(any(report.wave for report in reports.values()))
    result = fleet_result(fleet, reports, waves_run, on_failure, time.monotonic() - started)
    if interrupt is not None:
        raise fleet_interrupted(fleet, result, interrupt)
    failed = [r for r in result.targets if r.status == "failed"]
    if failed:
        raise fleet_failed(fleet, result, failed, "deploy")
    deployed = result.summary.get("deployed", 0)
    return Success(
        operation="deploy-migrations",
        environment=fleet.environment,
        result=result,
        message=f"Deployed {deployed} target(s) of {fleet.environment}; "
        f"{result.summary.get('up_to_date', 0)} up to date",
    )


def status(runner: Runner) -> Success:
    """``faber status FLEET``: each target's migration status, as a table."""
    fleet = runner.fleet
    started = time.monotonic()
    runner.progress.started(fleet, "Fleet Status")
    surveyed: dict[str, TargetReport] = {}
    survey(runner, surveyed, leftovers=True)
    result = fleet_result(fleet, surveyed, 0, on_failure_of(fleet), time.monotonic() - started)
    failed = [r for r in result.targets if r.status == "failed"]
    if failed:
        raise fleet_failed(fleet, result, failed, "status")
    return Success(
        operation="migration-status",
        environment=fleet.environment,
        result=result,
        message=f"{result.summary.get('up_to_date', 0)} of {len(fleet.targets)} target(s) up to date",
    )


def read_on_the_way(fleet: Fleet, options: DeployOptions) -> bool:
    """Whether each target's status is read on its way to its deploy, on the deploy's own session,
    instead of every target's first: when the fleet is one wave and nobody is asked to approve it,
    nothing needs to know beforehand which targets are up to date (a dry run lists them)."""
    rollout = fleet.settings.rollout
    one_wave = rollout is None or (rollout.canary == 0 and rollout.percentages() == [100])
    asks = fleet.settings.require_approval and not options.assume_yes
    return one_wave and not asks and not options.dry_run


def on_failure_of(fleet: Fleet) -> str:
    rollout = fleet.settings.rollout
    return rollout.on_failure if rollout else "stop"


class Surveyed(BaseModel):
    """What the survey read of one target (``environment``: ``FLEET/TARGET``)."""

    environment: str
    state: MigrationState
    leftover_databases: list[LeftoverDatabase] = Field(default_factory=list)
    interrupted_restores: list[InterruptedRestore] = Field(default_factory=list)


def survey(runner: Runner, reports: dict[str, TargetReport], *, leftovers: bool = False) -> None:
    """Every target's migration status, read concurrently into ``reports``: pending, up to date, or
    failed (with why); with ``leftovers`` (``faber status``) also what killed runs left of it, as
    ``faber status`` reports for one database. An interrupt starts no further read, waits for the
    running ones (each ends its own session), and propagates, ``reports`` holding the statuses
    read until then."""

    def read(context: RunContext, plugins: Plugins) -> Success:
        found = read_target(context, plugins, leftovers=leftovers)
        return Success(operation="migration-status", environment=context.environment, result=found, message="")

    runner.progress.line(f"… Reading the migration status of {len(runner.fleet.targets)} target(s)")
    with _pool(runner.fleet.concurrency) as pool:
        try:
            futures = {
                target.name: pool.submit(runner.run_target, "migration-status", target, read)
                for target in runner.fleet.targets
            }
            for name, future in futures.items():
                document = future.result()
                reports[name] = (
                    TargetReport(name=name, status="failed", error=target_error(document))
                    if isinstance(document, ErrorDocument)
                    else surveyed_report(name, document.result)
                )
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)  # the pool's exit waits for the running reads
            raise


def read_target(
    context: RunContext, plugins: Plugins, *, leftovers: bool = False, checks_skipped: bool = False
) -> Surveyed:
    """One target's migration status (and with ``leftovers``, what killed runs left of it);
    ``checks_skipped``: read by a deploy whose health checks are off, whose unreachable target is no
    failed check (:func:`faber_core.status_reads.connection_failed`)."""
    from faber_core.status_reads import read_leftovers, read_past_another_run, read_status

    plugins.require_tool(context.tool)
    state = read_past_another_run(
        context, lambda: read_status(context, plugins, quiet=True, checks_skipped=checks_skipped)
    )
    found = Surveyed(environment=context.environment, state=state)
    if leftovers:
        found.leftover_databases, found.interrupted_restores = read_leftovers(context)
    return found


def surveyed_report(name: str, found: Surveyed) -> TargetReport:
    state = found.state
    return TargetReport(
        name=name,
        status="failed" if state.failed else "pending" if state.pending else "up_to_date",
        pending=state.pending,
        failed_migrations=state.failed,
        applied_count=len(state.applied),
        leftover_databases=found.leftover_databases,
        interrupted_restores=found.interrupted_restores,
        error=TargetError(
            code=MigrationFailed.code,
            message=f"{len(state.failed)} failed migration(s): {', '.join(state.failed)}",
            exit_code=exit_code_for(MigrationFailed.code),
            suggestions=[
                f"Repair it, then: faber resolve {found.environment} --rolled-back {shlex.quote(state.failed[0])}"
            ],
        )
        if state.failed
        else None,
    )


def split_into_waves(targets: list[Target], settings: EnvironmentSettings) -> list[list[Target]]:
    """The canary's wave, then each wave's share (cumulative, of the targets to deploy, rounded up)."""
    rollout = settings.rollout
    if rollout is None:
        return [targets] if targets else []
    waves = []
    done = min(rollout.canary, len(targets))
    if done:
        waves.append(targets[:done])
    for percent in rollout.percentages():
        upto = max(done, -(-len(targets) * percent // 100))
        if upto > done:
            waves.append(targets[done:upto])
            done = upto
    return waves


def approve(fleet: Fleet, options: DeployOptions, count: int) -> DeployOptions:
    """One approval for the whole fleet; each target's deploy then runs approved as it was."""
    if not fleet.settings.require_approval or options.assume_yes:
        return options
    environment = fleet.environment
    question = f"Apply pending migrations to {count} target(s) of {environment}?"
    if options.approver is None:
        raise ApprovalRequired(
            f"Approval required to migrate {count} target(s) of {environment}, and there is no terminal to ask",
            result={"targets_to_deploy": count},
            suggestions=[
                f"Approve non-interactively (e.g. in CI): faber migrate {environment} --yes",
                f"Preview what would run: faber migrate {environment} --dry-run",
            ],
        )
    if not options.approver(question):
        raise ApprovalRequired(
            f"Deployment to {environment} was not approved",
            result={"targets_to_deploy": count},
            suggestions=["Nothing was applied", f"Preview what would run: faber migrate {environment} --dry-run"],
        )
    return replace(options, approver=lambda _question: True)  # approved at the prompt, for every target


def run_waves(
    runner: Runner,
    waves: list[list[Target]],
    deploy_one: Callable[[Target, Callable[[], bool]], Document],
    surveyed: dict[str, TargetReport],
    on_failure: str,
) -> tuple[dict[str, TargetReport], KeyboardInterrupt | None]:
    """Deploy wave after wave; a failure stops the fleet as ``on_failure`` says (module docstring).

    ``surveyed`` holds each target's status read beforehand; a target missing there reads its
    own on its way to its deploy (:func:`read_on_the_way`): ``deploy_one(target, go_on)`` then adds
    it, and deploys only when the target is not up to date and ``go_on()`` is still true: a target
    that starts after a failure stopped the fleet is read, not deployed, so its row says what it
    needs, and one still reading its status when an interrupt arrives goes no further.

    An interrupt (SIGINT, SIGTERM: the main thread gets it) starts no further target, and the
    running ones are waited for, so each target's row says how it ended; returned with the reports.
    """
    fleet = runner.fleet
    stop = threading.Event()
    interrupts: list[KeyboardInterrupt] = []

    def interrupted(interrupt: KeyboardInterrupt) -> None:
        first = not interrupts
        interrupts.append(interrupt)
        stop.set()
        if first:  # said once: the operator sees faber took it, and what it waits for
            try:
                runner.progress.line(
                    f"⚠ {signal_name(interrupt)}: no further target starts; waiting for those deploying to finish"
                )
            except KeyboardInterrupt as again:  # a second signal while it is said changes nothing
                interrupts.append(again)

    def attempt(number: int, target: Target) -> TargetReport:
        name = target.name
        read_first = name not in surveyed
        stopped_before = stop.is_set()
        if interrupts or (stopped_before and not read_first):
            return not_attempted(surveyed.get(name, unread(name)), number)
        started_at, started = dt.datetime.now(dt.timezone.utc), time.monotonic()
        if not read_first:
            runner.progress.line(f"… {name}: deploying {len(surveyed[name].pending)} migration(s)")
        document = deploy_one(target, lambda: not (stopped_before or interrupts))
        if isinstance(document, Success) and isinstance(document.result, Surveyed):  # ended once its status was read
            before = surveyed[name]
            return before if before.status == "up_to_date" else not_attempted(before, number)
        before = surveyed.get(name, unread(name))  # absent: its status could not be read
        report = deployed_report(before, document, number, started_at, time.monotonic() - started)
        runner.progress.target_finished(report)
        if report.status == "failed" and on_failure == "stop":
            stop.set()
        return report

    reports = dict(surveyed)
    with _pool(fleet.concurrency) as pool:
        for number, wave in enumerate(waves, 1):
            if stop.is_set():
                reports.update({t.name: not_attempted(surveyed[t.name], number) for t in wave})
                continue
            futures: dict[str, Future[TargetReport]] = {}
            try:
                runner.progress.line(f"… Wave {number} of {len(waves)}: {len(wave)} target(s)")
                for target in wave:
                    futures[target.name] = pool.submit(attempt, number, target)
            except KeyboardInterrupt as interrupt:
                interrupted(interrupt)
            for target in wave:
                future = futures.get(target.name)
                reports[target.name] = (
                    ended(future, interrupted)
                    if future
                    else not_attempted(surveyed.get(target.name, unread(target.name)), number)
                )
            if any(reports[t.name].status == "failed" for t in wave):
                stop.set()  # a wave starts only when the one before it succeeded
    return reports, interrupts[0] if interrupts else None


def ended(future: Future[TargetReport], interrupted: Callable[[KeyboardInterrupt], None]) -> TargetReport:
    """The target's report once its deploy ended. An interrupt meanwhile stops the fleet from
    starting more targets; this one goes on (it holds its lock, may be restoring) and is waited for."""
    while True:
        try:
            return future.result()
        except KeyboardInterrupt as interrupt:
            interrupted(interrupt)


def unread(name: str) -> TargetReport:
    """The row of a target whose status was not read (yet)."""
    return TargetReport(name=name, status="pending")


def not_attempted(before: TargetReport, wave: int | None) -> TargetReport:
    return before.model_copy(update={"status": "not_attempted", "wave": wave, "error": None})


def deployed_report(
    before: TargetReport, document: Document, wave: int, started_at: dt.datetime, duration: float
) -> TargetReport:
    timing = {
        "wave": wave,
        "started_at": started_at,
        "finished_at": started_at + dt.timedelta(seconds=duration),
        "duration_seconds": round(duration, 3),
    }
    if isinstance(document, ErrorDocument):
        failure = error_result(document)
        committed = list(failure.get("applied_migrations") or [])
        return before.model_copy(
            update={
                **timing,
                "status": "failed",
                "backup_id": document.recovery.backup_id or failure.get("backup_id"),
                "migrations_applied": committed,
                "migrations_rolled_back": committed if failure.get("rollback_status") == "success" else [],
                "error": target_error(document),
            }
        )
    result = document.result
    applied = [m.name for m in result.migrations] if isinstance(result, DeployResult) else []
    return before.model_copy(
        update={
            **timing,
            "status": "deployed" if applied else "up_to_date",
            "migrations_applied": applied,
            "backup_id": result.backup_id if isinstance(result, DeployResult) else None,
            "error": None,
        }
    )


def error_result(document: ErrorDocument) -> dict[str, Any]:
    """The error's ``result`` as its JSON carries it, whatever model the failure path used."""
    result = document.model_dump(mode="json").get("result")
    return result if isinstance(result, dict) else {}


def target_error(document: ErrorDocument) -> TargetError:
    rollback_status = error_result(document).get("rollback_status")
    return TargetError(
        code=document.code,
        message=document.error,
        exit_code=document.exit_code,
        suggestions=[*document.recovery.suggestions]
        + ([document.recovery.rollback_command] if document.recovery.rollback_command else []),
        rollback_status=rollback_status if isinstance(rollback_status, str) else None,
    )


# The document ----------------------------------------------------------------------------


def preview(fleet: Fleet, surveyed: dict[str, TargetReport], waves: int, on_failure: str, duration: float) -> Success:
    """``faber migrate FLEET --dry-run``: which migrations how many targets need; nothing touched.

    A target whose status cannot be read, or that has a failed migration, fails the preview as
    its deploy would fail."""
    result = fleet_result(fleet, surveyed, waves, on_failure, duration)
    failed = [r for r in result.targets if r.status == "failed"]
    if failed:
        raise fleet_failed(fleet, result, failed, "preview")
    pending = result.summary.get("pending", 0) + result.summary.get("failed", 0)
    return Success(
        operation="preview-migrations",
        environment=fleet.environment,
        result=result,
        message=f"Preview only - no changes applied: {pending} of {len(fleet.targets)} target(s) to deploy",
    )


def fleet_result(
    fleet: Fleet, reports: dict[str, TargetReport], waves: int, on_failure: str, duration: float
) -> FleetResult:
    rows = [reports[t.name] for t in fleet.targets]
    migrations = Counter(name for row in rows for name in row.pending)
    return FleetResult(
        targets_total=fleet.targets_total,
        shard=str(fleet.shard) if fleet.shard else None,
        concurrency=fleet.concurrency,
        on_failure=on_failure,  # type: ignore[arg-type]
        waves=waves,
        summary=dict(Counter(row.status for row in rows)),
        migrations=dict(migrations),
        total_duration_seconds=round(duration, 3),
        targets=rows,
    )


def fleet_failed(fleet: Fleet, result: FleetResult, failed: list[TargetReport], command: str) -> FleetFailed:
    first = failed[0]
    assert first.error is not None
    not_attempted_count = result.summary.get("not_attempted", 0)
    message = f"{len(failed)} of {len(result.targets)} target(s) of {fleet.environment} failed"
    if not_attempted_count:
        message += f", {not_attempted_count} not attempted"
    message += f"; first: {first.name}: {first.error.code}: {first.error.message}"
    suggestions = [
        f"{report.name}: {hint}" for report in failed for hint in (report.error.suggestions if report.error else [])[:3]
    ]
    if command == "deploy":
        suggestions.append(
            f"Fix what failed, then run again: faber migrate {fleet.environment} (up-to-date targets are skipped)"
        )
    return FleetFailed(first.error.code, message, result=result.model_dump(mode="json"), suggestions=suggestions)


def fleet_interrupted(fleet: Fleet, result: FleetResult, interrupt: KeyboardInterrupt) -> Interrupted:
    """The fleet stopped by a signal: per target what committed, what was rolled back, and what did
    not start, as a single deploy's interrupted result says it for one database."""
    result = result.model_copy(update={"interrupted_by": signal_name(interrupt)})
    by_status: dict[str, list[TargetReport]] = {}
    for report in result.targets:
        by_status.setdefault(report.status, []).append(report)
    counts = [
        f"{len(by_status[status])} {label}"
        for status, label in (
            ("deployed", "deployed"),
            ("failed", "failed"),
            ("not_attempted", "not started"),
            ("up_to_date", "up to date"),
        )
        if by_status.get(status)
    ]
    suggestions = [
        f"{report.name}: {hint}"
        for report in by_status.get("failed", [])
        for hint in (report.error.suggestions if report.error else [])[:3]
    ]
    not_started = [report.name for report in by_status.get("not_attempted", [])]
    if not_started:
        suggestions.append(
            f"Not started, untouched: {', '.join(not_started)}; deploy them with: faber migrate {fleet.environment} "
            "(deployed and up-to-date targets are skipped)"
        )
    return Interrupted(
        f"Interrupted by {result.interrupted_by}: no further target started, the running ones finished; "
        + ", ".join(counts),
        result=result.model_dump(mode="json"),
        suggestions=suggestions,
    )


# Threads ---------------------------------------------------------------------------------


@contextmanager
def _pool(concurrency: int) -> Iterator[ThreadPoolExecutor]:
    """Worker threads whose spans nest under the fleet's command span (OpenTelemetry's context is
    per thread, and a pool's threads do not inherit it)."""
    parent = otel_context.get_current()
    build_deferred_models()

    def inherit() -> None:
        otel_context.attach(parent)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="faber-target", initializer=inherit) as pool:
        yield pool


class FleetProgress:
    """The fleet's progress lines on stderr, one line at a time from any thread."""

    def __init__(self, stream: TextIO | None, redactor: Redactor) -> None:
        self.stream = stream
        self.redactor = redactor
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        if self.stream is None:
            return
        with self.lock:
            self.stream.write(escape_controls(self.redactor.redact(text)) + "\n")
            self.stream.flush()

    def started(self, fleet: Fleet, title: str) -> None:
        shard = f", shard {fleet.shard}: {len(fleet.targets)}" if fleet.shard else ""
        self.line(f"🎯 STARTING: {title}")
        self.line(f"Environment: {fleet.environment} ({fleet.targets_total} target(s){shard})")
        self.line(f"Concurrency: {fleet.concurrency}")

    def target_finished(self, report: TargetReport) -> None:
        took = f" ({report.duration_seconds:g}s)" if report.duration_seconds is not None else ""
        if report.status == "failed" and report.error:
            self.line(f"✗ {report.name}: {report.error.code}: {report.error.message}{took}")
        elif report.status == "deployed":
            backup = f", backup {report.backup_id}" if report.backup_id else ""
            self.line(f"✓ {report.name}: {len(report.migrations_applied)} migration(s) applied{took}{backup}")
        else:
            self.line(f"✓ {report.name}: up to date{took}")
