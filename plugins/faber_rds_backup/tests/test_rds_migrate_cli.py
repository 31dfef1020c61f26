"""``faber migrate production`` end to end with rds-snapshot backups: the database is the local
PostgreSQL, the RDS instance a moto one, the migrations a Prisma project (faber-prisma)."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import socket
import time

import pytest
from faber_core.testing.faults import FaberProcess, end_faber_lock_session
from faber_core.testing.fixtures import CANARY_PASSWORD

from faber_rds_backup import naming

pytest.importorskip("faber_prisma", reason="the end-to-end deploy drives the Prisma handler")

URL_ENV = "RDS_E2E_DATABASE_URL"
INIT = 'CREATE TABLE "User" ("id" SERIAL PRIMARY KEY, "email" TEXT NOT NULL);\n'
ADD_NAME = 'ALTER TABLE "User" ADD COLUMN "name" TEXT;\n'
# Runs outside a transaction, so faber cannot know the database is untouched and rolls back.
# Outside a transaction: the first statement commits, then the index fails, so a restore is needed.
# Prisma's bookkeeping rows for it are unmeasured, but in its declared bookkeeping table: the
# protected environment's default restore_with_app_writes (refuse) restores.
FAILING_CONCURRENT_INDEX = (
    'CREATE TABLE "Extra" ("id" INTEGER);\nCREATE INDEX CONCURRENTLY "User_nope_idx" ON "User" ("nope");\n'
)


@pytest.fixture
def prisma_rds_project(faber_project, database_url, backup_settings, monkeypatch):
    """``make(migrations) -> Path``: a Prisma project whose production backs up to the moto RDS instance."""
    monkeypatch.setenv(URL_ENV, database_url)

    def make(migrations: dict[str, str], **backup_overrides):
        backup = backup_settings(**backup_overrides)
        production = {
            "database_url_env": URL_ENV,
            "lock_wait_seconds": 5,
            "backup": backup,
        }
        config = {"database": {"migration_tool": "prisma", "environments": {"production": production}}}
        files = {f"prisma/migrations/{name}/migration.sql": sql for name, sql in migrations.items()}
        return faber_project(config, files)

    return make


def deploy(run_faber, project):
    return run_faber("migrate", "production", "--yes", "--json", "--cwd", str(project))


def test_migrate_production_snapshots_the_rds_instance_first(rds, rds_instance, prisma_rds_project, run_faber):
    project = prisma_rds_project({"0001_init": INIT})
    assert deploy(run_faber, project).returncode == 0
    prisma_rds_project({"0001_init": INIT, "0002_name": ADD_NAME})

    run = deploy(run_faber, project)

    assert run.returncode == 0, run.output
    backup_id = run.json["result"]["backup_id"]
    assert re.fullmatch(r"faber-production-\d{8}-\d{6}(-\d)?", backup_id)
    [snapshot] = [
        s
        for s in rds.describe_db_snapshots(DBInstanceIdentifier="prod-db")["DBSnapshots"]
        if s["DBSnapshotIdentifier"] == backup_id
    ]
    assert snapshot["Status"] == "available"
    listing = run_faber("backups", "production", "--json", "--cwd", str(project))
    assert listing.returncode == 0, listing.output
    backups = listing.json["result"]["backups"]
    assert [b["id"] for b in backups][0] == backup_id
    assert [m[0] for m in backups[0]["migrations"]] == ["0001_init"]
    assert backups[0]["provider"] == "rds-snapshot" and backups[0]["size_bytes"] == 20 * 1024**3
    assert CANARY_PASSWORD not in run.output + listing.output


def test_a_failed_deploy_rolls_back_by_swapping_in_the_restored_instance(
    rds, rds_instance, prisma_rds_project, run_faber
):
    project = prisma_rds_project({"0001_init": INIT})
    assert deploy(run_faber, project).returncode == 0
    prisma_rds_project({"0001_init": INIT, "0002_broken": FAILING_CONCURRENT_INDEX})

    run = deploy(run_faber, project)

    # The RDS side is moto's, so the restore changes the moto instance, not the local PostgreSQL;
    # faber's verification (the migration history equals the backup's) holds because the failed
    # migration is recorded unfinished.
    assert run.returncode == 6, run.output
    result = run.json["result"]
    assert result["failed_migration"] == "0002_broken"
    assert (result["rollback_initiated"], result["rollback_status"]) == (True, "success"), result
    identifiers = {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]}
    [previous] = [i for i in identifiers if i != "prod-db"]
    assert re.fullmatch(r"prod-db-pre-rollback-\d{8}-\d{6}", previous)
    arn = rds.describe_db_instances(DBInstanceIdentifier="prod-db")["DBInstances"][0]["DBInstanceArn"]
    tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=arn)["TagList"]}
    assert tags["faber:restored-from"] == result["backup_id"]
    assert CANARY_PASSWORD not in run.output


def test_access_denied_stops_the_deploy_before_anything_is_applied(
    rds_instance, prisma_rds_project, run_faber, iam_user, database_url
):
    import psycopg

    project = prisma_rds_project({"0001_init": INIT})
    iam_user(["rds:DescribeDBInstances", "rds:DescribeDBSnapshots"])

    run = deploy(run_faber, project)

    iam_user(None)
    assert run.returncode == 4, run.output
    document = run.json
    assert document["error"] == "Failed to create pre-migration backup"
    assert document["result"]["backup_error"] == "Insufficient AWS permissions for RDS snapshot"
    assert (
        "Or skip backup (NOT recommended): faber migrate production --skip-backup"
        in (document["recovery"]["suggestions"])
    )
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('public.\"User\"')").fetchone() == (None,)


def test_a_rollback_to_a_snapshot_without_its_manifest_is_refused_before_the_swap(
    rds, rds_instance, prisma_rds_project, run_faber
):
    # As on a fresh CI runner: without the manifest's migrations the restore cannot be verified, and
    # was reported failed (exit 8, retry advised) once the instance had been swapped.
    project = prisma_rds_project({"0001_init": INIT})
    backup = run_faber("backup", "production", "--json", "--cwd", str(project))
    assert backup.returncode == 0, backup.output
    backup_id = backup.json["result"]["id"]
    (project / ".faber" / "backups" / "production" / f"{backup_id}.json").unlink()

    for to in (["--to", backup_id], []):
        run = run_faber("rollback", "production", *to, "--yes", "--json", "--cwd", str(project))

        assert run.returncode == 2, run.output
        assert run.json["code"] == "CONFIG_INVALID"
    assert (
        "is missing or unreadable, so a restore of it cannot be verified"
        in run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", "--cwd", str(project)).json[
            "error"
        ]
    )
    assert [db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]] == ["prod-db"]


def test_side_by_side_rollback_reports_the_copy_and_does_not_claim_a_verified_restore(
    rds, rds_instance, prisma_rds_project, run_faber
):
    project = prisma_rds_project({"0001_init": INIT}, restore_mode="side-by-side")
    backup = run_faber("backup", "production", "--json", "--cwd", str(project))
    assert backup.returncode == 0, backup.output

    run = run_faber("rollback", "production", "--yes", "--json", "--cwd", str(project))

    assert run.returncode == 0, run.output
    result = run.json["result"]
    assert result["rollback_status"] == "restored_side_by_side" and result["verified"] is False
    assert result["original_unchanged"] is True and result["endpoint"]
    assert "beside the database; the database itself is unchanged" in run.stderr
    identifiers = {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]}
    assert "prod-db" in identifiers and len(identifiers) == 2
    # The copy is the rollback's result, not a stopped swap's leftover: the next backup goes on.
    again = run_faber("backup", "production", "--json", "--cwd", str(project))
    assert again.returncode == 0, again.output


@pytest.mark.parametrize(
    ("held", "after", "count", "committed"),
    [
        # The restore was asked for and reached AWS, its answer not faber: the copy exists all the same.
        ("RestoreDBInstanceFromDBSnapshot", "DescribeDBSnapshots", 1, False),
        # Waiting for the restored copy: the original was never touched.
        ("DescribeDBInstances", "RestoreDBInstanceFromDBSnapshot", 1, False),
        # Waiting for the swapped-in copy to serve under the original's identifier: the swap happened.
        ("DescribeDBInstances", "ModifyDBInstance", 2, True),
    ],
    ids=["restore-requested", "before-the-swap", "after-the-swap"],
)
def test_sigterm_during_rollback_says_whether_the_swap_happened(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy, held, after, count, committed
):
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url)
    backup = run_faber("backup", "production", "--json", "--cwd", str(project))
    assert backup.returncode == 0, backup.output
    backup_id = backup.json["result"]["id"]
    throttling_proxy.hold(held, after=after, count=count)

    run, code = stopped_while_held(
        throttling_proxy,
        project,
        "rollback",
        "production",
        "--to",
        backup_id,
        "--yes",
        "--json",
        what=f"{held} held after {after}",
    )

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED" and document["result"]["restore_committed"] is committed, document
    arn = rds.describe_db_instances(DBInstanceIdentifier="prod-db")["DBInstances"][0]["DBInstanceArn"]
    tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=arn)["TagList"]}
    assert (tags.get("faber:restored-from") == backup_id) is committed, tags
    said = document["error"] + " ".join(document["recovery"]["suggestions"])
    assert ("is exactly " + backup_id if committed else "exactly as it was before the rollback") in said, said
    # Whatever the run left in AWS beside prod-db is named (the held call reaches moto once released).
    left = wait_for_restored_copy(rds)
    assert all(i in document["result"]["details"] for i in left - {"prod-db"}), (left, document["result"]["details"])
    assert "Nothing was changed" not in document["result"]["details"]
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


@pytest.mark.parametrize(
    ("count", "renamed"),
    [(1, ("prod-db", "-pre-rollback-")), (2, ("-restored-", "prod-db"))],
    ids=["first-rename", "second-rename"],
)
def test_sigterm_while_rds_has_not_answered_a_rename_says_it_may_have_happened(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy, count, renamed
):
    # AWS renamed the instance and its answer was held: faber said "the restore had not committed:
    # production is exactly as it was before the rollback" (first rename) though prod-db no longer
    # existed, or named only the state between the renames (second) though the swap was done.
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url)
    backup = run_faber("backup", "production", "--json", "--cwd", str(project))
    assert backup.returncode == 0, backup.output
    backup_id = backup.json["result"]["id"]
    throttling_proxy.hold("ModifyDBInstance", after="ModifyDBInstance", count=count - 1, answer=True)

    run, code = stopped_while_held(
        throttling_proxy, project, "rollback", "production", "--to", backup_id, "--yes", "--json", what="the rename"
    )

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED" and document["result"].get("restore_committed") is None, document
    said = document["error"] + " ".join(document["recovery"]["suggestions"])
    assert "exactly as it was before the rollback" not in said, said
    details = document["result"]["details"]
    assert "was requested, so it may have happened" in details, details
    commands = "\n".join(document["result"]["provider_data"]["commands"])
    assert "--new-db-instance-identifier prod-db" in commands, commands  # finish or undo the swap
    # The advice carries them too: a plain retry refuses while the copy exists.
    assert document["recovery"]["suggestions"][: commands.count("\n") + 1] == commands.splitlines()
    source, _ = renamed
    assert any(source in line and "describe-db-instances" in line for line in commands.splitlines()), commands
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def wait_for_restored_copy(rds) -> set[str]:
    """The instances, once the restore a test let through has reached moto."""
    deadline = time.monotonic() + 30
    while True:
        found = {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]}
        if len(found) > 1 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def rollback_killed(
    project, run_faber, rds, throttling_proxy, *, after: str, held: str = "DescribeDBInstances"
) -> tuple[str, set[str]]:
    """Back up, then SIGKILL a rollback to that backup while RDS holds its first ``held`` call (an
    instance's DescribeDBInstances, a cluster's DescribeDBClusters) after ``after`` (its wait for
    what it asked): the backup's id and the instances (or clusters) left."""
    backup = run_faber("backup", "production", "--json", "--cwd", str(project))
    assert backup.returncode == 0, backup.output
    backup_id = backup.json["result"]["id"]
    throttling_proxy.hold(held, after=after)

    stopped_while_held(
        throttling_proxy,
        project,
        "rollback",
        "production",
        "--to",
        backup_id,
        "--yes",
        "--json",
        what=f"the rollback's wait after {after}",
        signum=signal.SIGKILL,
    )
    if held == "DescribeDBClusters":
        return backup_id, {c["DBClusterIdentifier"] for c in rds.describe_db_clusters()["DBClusters"]}
    return backup_id, {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]}


def test_a_rollback_killed_between_its_renames_is_found_and_explained_by_the_next_run(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy
):
    # SIGKILL leaves no report: the next run finds prod-db missing. It said "Nothing was changed:
    # prod-db still serves the database" (rollback) and "check backup.db_instance_identifier" (migrate).
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url)
    backup_id, left = rollback_killed(project, run_faber, rds, throttling_proxy, after="ModifyDBInstance")
    [previous] = [i for i in left if "-pre-rollback-" in i]
    [restored] = [i for i in left if "-restored-" in i]
    assert left == {previous, restored}, "the kill came between the two renames"
    finish = f"--db-instance-identifier {restored} --new-db-instance-identifier prod-db"
    undo = f"--db-instance-identifier {previous} --new-db-instance-identifier prod-db"

    rollback = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", "--cwd", str(project))

    assert rollback.returncode == 8, rollback.output
    document = rollback.json
    assert "a rollback was stopped between its two renames and left it as " + previous in document["error"]
    assert document["result"]["state"].startswith(f"prod-db was renamed to {previous}; no database answers")
    assert (document["result"]["previous_identifier"], document["result"]["restored_identifier"]) == (
        previous,
        restored,
    )
    suggestions = "\n".join(document["recovery"]["suggestions"])
    assert finish in suggestions and undo in suggestions, suggestions
    assert "Nothing was changed" not in rollback.output

    prisma_rds_project({"0001_init": INIT, "0002_name": ADD_NAME}, endpoint_url=throttling_proxy.url)
    migrate = deploy(run_faber, project)

    assert migrate.returncode == 4, migrate.output
    assert previous in migrate.json["result"]["backup_error"], migrate.json
    suggestions = "\n".join(migrate.json["recovery"]["suggestions"])
    assert finish in suggestions and undo in suggestions, suggestions

    status = run_faber("status", "production", "--json", "--cwd", str(project))

    assert status.returncode == 0, status.output
    [leftover] = status.json["result"]["backup_leftovers"]
    assert leftover["name"] == previous and leftover["details"].startswith(f"prod-db was renamed to {previous}")
    commands = "\n".join(leftover["commands"])
    assert finish in commands and undo in commands, commands
    assert {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]} == left
    assert CANARY_PASSWORD not in rollback.output + migrate.output + status.output


def test_a_rollback_killed_before_its_swap_leaves_a_copy_the_next_runs_name_and_leave_alone(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy
):
    # SIGKILL once the restore was requested: prod-db-restored-<ts> is billed beside prod-db. The next
    # rollback made a second copy, and a deploy went on, with nothing mentioning the first.
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url)
    backup_id, left = rollback_killed(
        project, run_faber, rds, throttling_proxy, after="RestoreDBInstanceFromDBSnapshot"
    )
    [copy] = left - {"prod-db"}
    assert "prod-db" in left and "-restored-" in copy, left
    snapshots = manual_snapshots(rds)
    remove = f"delete-db-instance --db-instance-identifier {copy}"
    finish = f"--db-instance-identifier {copy} --new-db-instance-identifier prod-db"

    rollback = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", "--cwd", str(project))

    assert rollback.returncode == 8, rollback.output
    document = rollback.json
    assert f"{copy} exists beside prod-db: a rollback to {backup_id} was stopped before its swap" in document["error"]
    assert document["result"]["restored_identifier"] == copy, document["result"]
    assert document["result"]["state"].startswith("prod-db is unchanged and still serves the database"), document
    suggestions = "\n".join(document["recovery"]["suggestions"])
    assert remove in suggestions and finish in suggestions, suggestions

    prisma_rds_project({"0001_init": INIT, "0002_name": ADD_NAME}, endpoint_url=throttling_proxy.url)
    migrate = deploy(run_faber, project)

    assert migrate.returncode == 4, migrate.output
    assert copy in migrate.json["result"]["backup_error"], migrate.json
    assert remove in "\n".join(migrate.json["recovery"]["suggestions"]), migrate.json
    assert {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]} == left
    assert manual_snapshots(rds) == snapshots, "the deploy took no snapshot"

    # faber status, where the docs send the operator, asked AWS nothing and did not mention it.
    status = run_faber("status", "production", "--json", "--cwd", str(project))

    assert status.returncode == 0, status.output
    [leftover] = status.json["result"]["backup_leftovers"]
    assert leftover["name"] == copy and leftover["details"].startswith("prod-db is unchanged"), leftover
    assert any(remove in command for command in leftover["commands"]), leftover
    assert status.json["result"]["backup_leftovers_unchecked"] is None
    human = run_faber("status", "production", "--cwd", str(project))
    assert human.returncode == 0 and f"⚠ {copy}" in human.output, human.output
    assert {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]} == left
    assert CANARY_PASSWORD not in rollback.output + migrate.output + status.output + human.output

    # --skip-backup made no backup, so nothing refused, and nothing named the copy either.
    skipped = run_faber("migrate", "production", "--yes", "--skip-backup", "--json", "--cwd", str(project))

    assert skipped.returncode == 0, skipped.output
    result = skipped.json["result"]
    assert result["migrations_applied"] == 2 and result["backup_id"] is None, result
    [warned] = result["backup_leftovers"]
    assert warned["name"] == copy and warned["details"].startswith("prod-db is unchanged"), warned
    assert any(remove in command for command in warned["commands"]), warned
    assert result["backup_leftovers_unchecked"] is None
    assert f"  ⚠ {copy}  prod-db is unchanged" in skipped.stderr, skipped.stderr
    assert remove in skipped.stderr
    assert {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]} == left
    assert manual_snapshots(rds) == snapshots, "no snapshot"
    assert CANARY_PASSWORD not in skipped.output


@pytest.mark.parametrize("command", ["backup", "migrate"])
def test_a_snapshot_still_being_made_when_a_signal_stops_the_backup_is_named(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy, command
):
    # It said only "Interrupted by SIGTERM": nothing named the snapshot AWS went on making (billed,
    # and without its manifest unusable for a rollback).
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url)
    if command == "migrate":
        assert deploy(run_faber, project).returncode == 0
        prisma_rds_project({"0001_init": INIT, "0002_name": ADD_NAME}, endpoint_url=throttling_proxy.url)
    before = manual_snapshots(rds)
    throttling_proxy.hold("DescribeDBSnapshots", after="CreateDBSnapshot", count=len(before) + 1)
    argv = ["migrate", "production", "--yes"] if command == "migrate" else ["backup", "production"]

    run, code = stopped_while_held(throttling_proxy, project, *argv, "--json", what="the wait for the snapshot")

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    [snapshot_id] = manual_snapshots(rds) - before
    assert document["code"] == "INTERRUPTED" and document["result"]["snapshot_id"] == snapshot_id, document
    assert snapshot_id in document["error"] and "cannot roll back to it" in document["error"], document["error"]
    suggestions = "\n".join(document["recovery"]["suggestions"])
    assert f"describe-db-snapshots --db-snapshot-identifier {snapshot_id}" in suggestions, suggestions
    assert f"delete-db-snapshot --db-snapshot-identifier {snapshot_id}" in suggestions, suggestions
    assert f"faber rollback production --to {snapshot_id}" not in run.stdout(), "no rollback to it is advised"
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_a_snapshot_whose_backup_was_killed_while_rds_made_it_is_listed_with_the_command_that_deletes_it(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy
):
    # kill -9 leaves no report, and no manifest anywhere: the listing said only to copy the manifest
    # from the machine that took the snapshot, which has none.
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url)
    throttling_proxy.hold("DescribeDBSnapshots", after="CreateDBSnapshot", count=1)

    run, code = stopped_while_held(
        throttling_proxy, project, "backup", "production", "--json", what="the wait", signum=signal.SIGKILL
    )
    listed = run_faber("backups", "production", "--json", "--cwd", str(project))

    assert code == -signal.SIGKILL
    assert listed.returncode == 0, listed.output
    [snapshot] = listed.json["result"]["backups"]
    assert snapshot["status"] == "unusable" and snapshot["provider_data"]["manifest"] is False, snapshot
    assert f"delete-db-snapshot --db-snapshot-identifier {snapshot['id']}" in snapshot["problem"], snapshot["problem"]
    assert CANARY_PASSWORD not in listed.output


def test_a_signal_while_rds_has_not_answered_never_names_an_earlier_backup_whose_name_was_taken(
    rds, rds_instance, prisma_rds_project, throttling_proxy
):
    """Snapshots already hold the names of the seconds the backup runs in (as an earlier deploy's
    within the same second does). faber asked first for the taken name, and a signal while RDS had
    not answered named that earlier backup as the one that may exist, advising to delete it."""
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url)
    start = dt.datetime.now(dt.timezone.utc)
    earlier = {naming.snapshot_identifier("production", start + dt.timedelta(seconds=second)) for second in range(30)}
    for identifier in earlier:
        rds.create_db_snapshot(
            DBSnapshotIdentifier=identifier, DBInstanceIdentifier=rds_instance["DBInstanceIdentifier"]
        )
    throttling_proxy.hold("CreateDBSnapshot", after="DescribeDBInstances", count=0)

    run, code = stopped_while_held(
        throttling_proxy, project, "backup", "production", "--json", what="the CreateDBSnapshot request in flight"
    )

    assert code == 130, run.stdout() + run.stderr()
    snapshot_id = json.loads(run.stdout())["result"]["snapshot_id"]
    assert snapshot_id not in earlier and snapshot_id.endswith("-2"), snapshot_id
    deadline = time.monotonic() + 30
    while snapshot_id not in manual_snapshots(rds) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert manual_snapshots(rds) == earlier | {snapshot_id}


@pytest.mark.parametrize("command", ["backup", "migrate"])
@pytest.mark.parametrize("answer", [True, False], ids=["created-answer-held", "request-held"])
def test_a_signal_while_rds_has_not_answered_the_snapshot_request_names_the_snapshot_that_may_exist(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy, database_url, command, answer
):
    # It said only "Interrupted by SIGTERM", with no snapshot named, though faber had chosen its
    # identifier and the request may have created it (it did, when only RDS's answer was slow).
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url)
    if command == "migrate":
        assert deploy(run_faber, project).returncode == 0
        prisma_rds_project({"0001_init": INIT, "0002_name": ADD_NAME}, endpoint_url=throttling_proxy.url)
    before = manual_snapshots(rds)
    throttling_proxy.hold("CreateDBSnapshot", after="DescribeDBInstances", count=0, answer=answer)
    argv = ["migrate", "production", "--yes"] if command == "migrate" else ["backup", "production"]

    def meanwhile() -> None:
        if answer:
            assert len(manual_snapshots(rds) - before) == 1, "moto made the snapshot; its answer is held"
        else:
            assert manual_snapshots(rds) == before, "the request has not reached moto yet"

    run, code = stopped_while_held(
        throttling_proxy, project, *argv, "--json", what="the CreateDBSnapshot request in flight", meanwhile=meanwhile
    )

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert document["code"] == "INTERRUPTED", document
    snapshot_id = document["result"]["snapshot_id"]
    assert re.fullmatch(r"faber-production-\d{8}-\d{6}(-\d+)?", snapshot_id), document["result"]
    assert document["result"]["snapshot_exists"] is None, "faber cannot tell whether the request reached AWS"
    assert f"snapshot {snapshot_id} of prod-db" in document["error"], document["error"]
    assert "may exist (and be billed) or not" in document["error"], document["error"]
    suggestions = "\n".join(document["recovery"]["suggestions"])
    assert f"describe-db-snapshots --db-snapshot-identifier {snapshot_id}" in suggestions, suggestions
    assert f"delete-db-snapshot --db-snapshot-identifier {snapshot_id}" in suggestions, suggestions
    # The held request, released, reaches moto either way: the snapshot named is the one made.
    deadline = time.monotonic() + 30
    while not manual_snapshots(rds) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert manual_snapshots(rds) - before == {snapshot_id}
    if command == "migrate":
        import psycopg

        with psycopg.connect(database_url) as conn:
            columns = "SELECT column_name FROM information_schema.columns WHERE table_name = 'User'"
            assert [c for (c,) in conn.execute(columns)] == ["id", "email"], "nothing was applied"
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_status_names_no_rds_leftovers_when_there_are_none_and_answers_when_aws_cannot_be_reached(
    rds, rds_instance, prisma_rds_project, run_faber
):
    project = prisma_rds_project({"0001_init": INIT})
    assert deploy(run_faber, project).returncode == 0

    status = run_faber("status", "production", "--json", "--cwd", str(project))

    assert status.returncode == 0, status.output
    assert status.json["result"]["backup_leftovers"] == [] and status.json["result"]["applied"] == ["0001_init"]
    assert status.json["result"]["backup_leftovers_unchecked"] is None

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}"
    prisma_rds_project({"0001_init": INIT}, endpoint_url=unreachable)

    status = run_faber("status", "production", "--json", "--cwd", str(project))

    assert status.returncode == 0, status.output
    assert status.json["result"]["applied"] == ["0001_init"], "the database is still reported"
    unchecked = status.json["result"]["backup_leftovers_unchecked"]
    assert unchecked.startswith("the rds-snapshot check could not run: could not list the RDS DB instances"), unchecked
    human = run_faber("status", "production", "--cwd", str(project))
    assert human.returncode == 0 and "the rds-snapshot check could not run" in human.output, human.output
    # A deploy that skips its backup (perhaps because AWS is down) goes on, and says it could not look.
    prisma_rds_project({"0001_init": INIT, "0002_name": ADD_NAME}, endpoint_url=unreachable)
    skipped = run_faber("migrate", "production", "--yes", "--skip-backup", "--json", "--cwd", str(project))
    assert skipped.returncode == 0, skipped.output
    assert skipped.json["result"]["migrations_applied"] == 1 and skipped.json["result"]["backup_leftovers"] == []
    unchecked = skipped.json["result"]["backup_leftovers_unchecked"]
    assert unchecked.startswith("the rds-snapshot check could not run: could not list the RDS DB instances"), unchecked
    assert "? the rds-snapshot check could not run" in skipped.stderr, skipped.stderr
    assert CANARY_PASSWORD not in status.output + human.output + skipped.output


def test_status_lists_the_database_a_finished_rollback_kept_as_kept_and_deploys_go_on(
    rds, rds_instance, prisma_rds_project, run_faber
):
    # The swapped-out instance, kept on purpose and billed, was named once by the rollback's result
    # and never again: faber status said nothing of it.
    # (moto's restore leaves the local database as it is, so the rollback goes back to no migration.)
    project = prisma_rds_project({"0001_init": INIT})
    assert run_faber("backup", "production", "--cwd", str(project)).returncode == 0
    rollback = run_faber("rollback", "production", "--yes", "--json", "--cwd", str(project))
    assert rollback.returncode == 0, rollback.output
    [previous] = {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]} - {"prod-db"}

    status = run_faber("status", "production", "--json", "--cwd", str(project))

    assert status.returncode == 0, status.output
    [kept] = status.json["result"]["backup_leftovers"]
    assert (kept["name"], kept["kept"]) == (previous, True), kept
    assert kept["details"].startswith("kept on purpose (available): prod-db as it was when a rollback"), kept
    assert any(f"delete-db-instance --db-instance-identifier {previous}" in c for c in kept["commands"]), kept
    human = run_faber("status", "production", "--cwd", str(project))
    assert human.returncode == 0 and f"ℹ {previous}  kept on purpose" in human.output, human.output
    assert f"⚠ {previous}" not in human.output
    # Kept is not left behind: the next deploy backs up and goes on, and one that skips its backup
    # is not warned about it.
    again = deploy(run_faber, project)
    assert again.returncode == 0, again.output
    assert "backup_leftovers" not in again.json["result"], "only a deploy that skips its backup looks"
    prisma_rds_project({"0001_init": INIT, "0002_name": ADD_NAME})
    skipped = run_faber("migrate", "production", "--yes", "--skip-backup", "--json", "--cwd", str(project))
    assert skipped.returncode == 0, skipped.output
    assert skipped.json["result"]["backup_leftovers"] == [], skipped.json["result"]
    assert previous not in skipped.output
    assert CANARY_PASSWORD not in status.output + human.output + again.output + skipped.output


def create_aurora_cluster(rds, identifier: str = "prod-aurora") -> None:
    rds.create_db_cluster(
        DBClusterIdentifier=identifier,
        Engine="aurora-postgresql",
        MasterUsername="app",
        MasterUserPassword="not-a-real-secret-1",
        Tags=[{"Key": "team", "Value": "payments"}],
    )
    rds.create_db_instance(
        DBInstanceIdentifier=f"{identifier}-1",
        DBClusterIdentifier=identifier,
        Engine="aurora-postgresql",
        DBInstanceClass="db.r6g.large",
    )


def test_an_aurora_cluster_is_backed_up_deployed_rolled_back_and_its_kept_cluster_listed(
    rds, prisma_rds_project, run_faber
):
    create_aurora_cluster(rds)
    cluster = {"db_instance_identifier": None, "db_cluster_identifier": "prod-aurora"}
    project = prisma_rds_project({"0001_init": INIT}, **cluster)

    backup = run_faber("backup", "production", "--json", "--cwd", str(project))

    assert backup.returncode == 0, backup.output
    backup_id = backup.json["result"]["id"]
    [snapshot] = rds.describe_db_cluster_snapshots(DBClusterIdentifier="prod-aurora", SnapshotType="manual")[
        "DBClusterSnapshots"
    ]
    assert snapshot["DBClusterSnapshotIdentifier"] == backup_id and snapshot["Status"] == "available"
    assert rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"] == [], "a cluster snapshot only"
    listing = run_faber("backups", "production", "--json", "--cwd", str(project))
    assert [b["id"] for b in listing.json["result"]["backups"]] == [backup_id], listing.output

    rollback = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", "--cwd", str(project))

    assert rollback.returncode == 0, rollback.output
    assert rollback.json["result"]["rollback_status"] == "success", rollback.json
    clusters = {c["DBClusterIdentifier"]: c for c in rds.describe_db_clusters()["DBClusters"]}
    [previous] = set(clusters) - {"prod-aurora"}
    assert re.fullmatch(r"prod-aurora-pre-rollback-\d{8}-\d{6}", previous)
    tags = {t["Key"]: t["Value"] for t in clusters["prod-aurora"]["TagList"]}
    assert tags["faber:restored-from"] == backup_id and tags["team"] == "payments", tags

    status = run_faber("status", "production", "--json", "--cwd", str(project))

    assert status.returncode == 0, status.output
    [kept] = status.json["result"]["backup_leftovers"]
    assert (kept["name"], kept["kept"]) == (previous, True), kept
    assert any(f"delete-db-cluster --db-cluster-identifier {previous}" in c for c in kept["commands"]), kept

    deployed = deploy(run_faber, project)

    assert deployed.returncode == 0, deployed.output
    assert deployed.json["result"]["backup_id"] in {
        s["DBClusterSnapshotIdentifier"]
        for s in rds.describe_db_cluster_snapshots(DBClusterIdentifier="prod-aurora")["DBClusterSnapshots"]
    }
    assert CANARY_PASSWORD not in backup.output + rollback.output + status.output + deployed.output


def test_a_signal_while_rds_has_not_answered_the_cluster_snapshot_request_names_the_snapshot(
    rds, prisma_rds_project, run_faber, throttling_proxy
):
    create_aurora_cluster(rds)
    project = prisma_rds_project(
        {"0001_init": INIT},
        db_instance_identifier=None,
        db_cluster_identifier="prod-aurora",
        endpoint_url=throttling_proxy.url,
    )
    throttling_proxy.hold("CreateDBClusterSnapshot", after="DescribeDBClusters", count=0, answer=True)

    run, code = stopped_while_held(
        throttling_proxy, project, "backup", "production", "--json", what="the CreateDBClusterSnapshot answer held"
    )

    assert code == 130, run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    [made] = rds.describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"]
    snapshot_id = made["DBClusterSnapshotIdentifier"]
    assert (document["result"]["snapshot_id"], document["result"]["snapshot_exists"]) == (snapshot_id, None)
    suggestions = "\n".join(document["recovery"]["suggestions"])
    assert f"describe-db-cluster-snapshots --db-cluster-snapshot-identifier {snapshot_id}" in suggestions
    assert f"delete-db-cluster-snapshot --db-cluster-snapshot-identifier {snapshot_id}" in suggestions
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_an_aurora_rollback_killed_before_its_swap_leaves_a_cluster_the_next_runs_name(
    rds, prisma_rds_project, run_faber, throttling_proxy
):
    create_aurora_cluster(rds)
    cluster = {"db_instance_identifier": None, "db_cluster_identifier": "prod-aurora"}
    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=throttling_proxy.url, **cluster)
    backup_id, left = rollback_killed(
        project, run_faber, rds, throttling_proxy, after="RestoreDBClusterFromSnapshot", held="DescribeDBClusters"
    )
    [copy] = left - {"prod-aurora"}
    assert "prod-aurora" in left and "-restored-" in copy, left
    remove = f"delete-db-cluster --db-cluster-identifier {copy}"

    rollback = run_faber("rollback", "production", "--to", backup_id, "--yes", "--json", "--cwd", str(project))

    assert rollback.returncode == 8, rollback.output
    assert f"{copy} exists beside prod-aurora" in rollback.json["error"], rollback.json
    assert remove in "\n".join(rollback.json["recovery"]["suggestions"])
    status = run_faber("status", "production", "--json", "--cwd", str(project))
    assert status.returncode == 0, status.output
    [leftover] = status.json["result"]["backup_leftovers"]
    assert (leftover["name"], leftover["kept"]) == (copy, False), leftover
    skipped = run_faber("migrate", "production", "--yes", "--skip-backup", "--json", "--cwd", str(project))
    assert skipped.returncode == 0, skipped.output
    assert [w["name"] for w in skipped.json["result"]["backup_leftovers"]] == [copy], skipped.json["result"]
    # A deploy that skipped its backup and failed names it too.
    prisma_rds_project(
        {"0001_init": INIT, "0002_broken": FAILING_CONCURRENT_INDEX}, endpoint_url=throttling_proxy.url, **cluster
    )
    failed = run_faber("migrate", "production", "--yes", "--skip-backup", "--json", "--cwd", str(project))
    assert failed.returncode == 6, failed.output
    assert failed.json["result"]["rollback_status"] == "no_backup", failed.json["result"]
    assert [w["name"] for w in failed.json["result"]["backup_leftovers"]] == [copy], failed.json["result"]
    assert {c["DBClusterIdentifier"] for c in rds.describe_db_clusters()["DBClusters"]} == left
    assert CANARY_PASSWORD not in rollback.output + status.output + skipped.output + failed.output


def stopped_while_held(
    proxy, project, *argv: str, what: str, signum: int = signal.SIGTERM, meanwhile=None
) -> tuple[FaberProcess, int | None]:
    """``faber <argv>`` in ``project``, sent ``signum`` once ``proxy`` holds its AWS call (``what``
    names it) and ``meanwhile()`` ran; then the call is let go. The process and how it ended."""
    run = FaberProcess.start(project, *argv)
    try:
        run.wait_until(proxy.holding.is_set, what=what)
        if meanwhile is not None:
            meanwhile()
        run.kill(signum)
        code = run.wait(30)
    finally:
        proxy.release()
        run.stop_everything()
    return run, code


def rollback_losing_its_lock_while_held(
    prisma_rds_project, run_faber, proxy, database_url: str, *, after: str, what: str
) -> tuple[str, FaberProcess, int]:
    """A backup of a Prisma project on RDS, then ``faber rollback production --to`` it, its lock
    session ended (as an operator or a proxy's timeout would) once ``proxy`` holds the
    ``DescribeDBInstances`` that follows the AWS call ``after`` (``what`` names that wait), then
    the call let go. The backup's id, the rollback's process and its exit code."""
    import psycopg

    project = prisma_rds_project({"0001_init": INIT}, endpoint_url=proxy.url)
    backup = run_faber("backup", "production", "--json", "--cwd", str(project))
    assert backup.returncode == 0, backup.output
    backup_id = backup.json["result"]["id"]
    proxy.hold("DescribeDBInstances", after=after)
    run = FaberProcess.start(project, "rollback", "production", "--to", backup_id, "--yes", "--json")
    try:
        run.wait_until(proxy.holding.is_set, what=what)
        with psycopg.connect(database_url, autocommit=True) as operator:
            end_faber_lock_session(operator)
        proxy.release()
        code = run.finish(120)
    finally:
        proxy.release()
        run.stop_everything()
    return backup_id, run, code


def manual_snapshots(rds) -> set[str]:
    return {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]}


def test_a_fleet_backed_up_by_snapshots_is_refused_before_any_target_is_touched(
    rds, rds_instance, faber_project, backup_settings, run_faber, database_url, monkeypatch
):
    # A snapshot is the whole instance: one target's rollback would swap it in under every target.
    import psycopg

    other = database_url.rsplit("/", 1)[0] + "/faber_other_tenant"
    monkeypatch.setenv("TENANT_DATABASE_URLS", f"acme {database_url}\nbeta {other}")
    tenants = {"targets": {"urls_env": "TENANT_DATABASE_URLS"}, "auto_rollback": True, "backup": backup_settings()}
    config = {"database": {"migration_tool": "prisma", "environments": {"tenants": tenants}}}
    project = faber_project(config, {"prisma/migrations/0001_init/migration.sql": INIT})

    for command in (["migrate", "tenants", "--yes"], ["migrate", "tenants/acme", "--yes"], ["backup", "tenants/acme"]):
        run = run_faber(*command, "--json", "--cwd", str(project))

        assert run.returncode == 2, run.output
        assert run.json["code"] == "CONFIG_INVALID"
        assert "backs up and restores a whole instance" in run.json["error"], run.json["error"]
    assert rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"] == []
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('public.\"User\"')").fetchone() == (None,)


def test_a_fleet_backed_up_by_snapshots_leaves_the_other_environments_commands_running(
    rds, rds_instance, faber_project, backup_settings, run_faber, database_url, monkeypatch
):
    # The refusal is the fleet's: production, one database backed up by snapshots, still deploys.
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("TENANT_DATABASE_URLS", f"acme {database_url.rsplit('/', 1)[0]}/faber_other_tenant")
    production = {"database_url_env": URL_ENV, "lock_wait_seconds": 5, "backup": backup_settings()}
    tenants = {"targets": {"urls_env": "TENANT_DATABASE_URLS"}, "backup": backup_settings()}
    config = {"database": {"migration_tool": "prisma", "environments": {"production": production, "tenants": tenants}}}
    project = faber_project(config, {"prisma/migrations/0001_init/migration.sql": INIT})

    run = deploy(run_faber, project)

    assert run.returncode == 0, run.output
    snapshots = rds.describe_db_snapshots(DBInstanceIdentifier="prod-db", SnapshotType="manual")["DBSnapshots"]
    assert [s["DBSnapshotIdentifier"] for s in snapshots] == [run.json["result"]["backup_id"]]
    status = run_faber("status", "production", "--json", "--cwd", str(project))
    assert status.returncode == 0, status.output
    refused = run_faber("backup", "tenants/acme", "--json", "--cwd", str(project))
    assert refused.returncode == 2, refused.output
    assert "backs up and restores a whole instance" in refused.json["error"], refused.json["error"]


def test_a_rollback_whose_lock_is_lost_while_the_copy_restores_stops_before_the_swap(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy, database_url
):
    """faber's lock session ended while RDS restores the copy (minutes, in AWS): another run may
    hold the lock by the time the copy is ready, so the renames must not start. The rollback stops
    with LOCKED (exit 7), restore_committed false, prod-db untouched, and the copy named."""
    backup_id, run, code = rollback_losing_its_lock_while_held(
        prisma_rds_project,
        run_faber,
        throttling_proxy,
        database_url,
        after="RestoreDBInstanceFromDBSnapshot",
        what="the wait for the restored copy",
    )

    document = json.loads(run.stdout())
    assert (code, document["code"]) == (7, "LOCKED"), document
    result = document["result"]
    assert (result["rollback_status"], result["restore_committed"]) == ("failed", False), result
    [restored] = {db["DBInstanceIdentifier"] for db in rds.describe_db_instances()["DBInstances"]} - {"prod-db"}
    assert result["provider_data"] == {"mode": "swap", "restored_instance": restored}, result
    assert f"{restored}, restored from {backup_id}, is left beside it" in document["error"], document
    arn = rds.describe_db_instances(DBInstanceIdentifier="prod-db")["DBInstances"][0]["DBInstanceArn"]
    tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=arn)["TagList"]}
    assert tags == {"team": "payments"}, "prod-db is the original, never renamed"
    suggestions = document["recovery"]["suggestions"]
    assert any(f"delete-db-instance --db-instance-identifier {restored}" in s for s in suggestions), suggestions
    assert "ModifyDBInstance" not in throttling_proxy.forwarded
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()


def test_a_rollback_whose_lock_is_lost_between_the_renames_says_the_swap_went_on(
    rds, rds_instance, prisma_rds_project, run_faber, throttling_proxy, database_url
):
    """Past the check before the first rename, RDS's renames cannot depend on faber's lock: a lock
    session ended between them does not stop the swap, and the rollback says so (exit 7,
    restore_committed true) rather than reporting a plain success."""
    backup_id, run, code = rollback_losing_its_lock_while_held(
        prisma_rds_project,
        run_faber,
        throttling_proxy,
        database_url,
        after="ModifyDBInstance",
        what="the wait between the renames",
    )

    document = json.loads(run.stdout())
    assert (code, document["code"]) == (7, "LOCKED"), document
    assert document["result"]["restore_committed"] is True, document
    assert "lost during the restore" in document["error"], document
    arn = rds.describe_db_instances(DBInstanceIdentifier="prod-db")["DBInstances"][0]["DBInstanceArn"]
    tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=arn)["TagList"]}
    assert tags.get("faber:restored-from") == backup_id, "the swap went on"
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
