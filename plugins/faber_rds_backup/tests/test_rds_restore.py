"""Rollback from an RDS snapshot: restore beside the original, then swap by renaming or leave it beside."""

from __future__ import annotations

import re

import pytest
from faber_core.errors import RestoreFailed

REGION = "eu-west-1"  # the region of conftest.backup_settings


def instances(rds) -> dict[str, dict]:
    return {db["DBInstanceIdentifier"]: db for db in rds.describe_db_instances()["DBInstances"]}


def tags_of(rds, arn: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=arn)["TagList"]}


# The original's own tags, and what faber adds to the copy a swap restores.
SWAPPED_IN_TAGS = {"team": "payments", "faber:swap-into": "prod-db"}


def test_restore_and_swap_puts_the_restored_copy_under_the_original_identifier(
    rds, rds_instance, rds_context, rds_plugins
):
    events: list = []
    context = rds_context(events)
    backup = rds_plugins.backup_create(context, "pre-migration backup", [])

    outcome = rds_plugins.backup_restore(context, backup)

    found = instances(rds)
    previous = outcome.provider_data["previous_instance"]
    assert re.fullmatch(r"prod-db-pre-rollback-\d{8}-\d{6}", previous)
    assert set(found) == {"prod-db", previous}
    serving = found["prod-db"]
    # moto copies the source's resource id into a restored instance, so the tags tell them apart.
    assert tags_of(rds, serving["DBInstanceArn"]) == SWAPPED_IN_TAGS | {"faber:restored-from": backup.id}
    assert tags_of(rds, found[previous]["DBInstanceArn"]) == {"team": "payments"}, "the original is kept"
    assert serving["DBInstanceClass"] == rds_instance["DBInstanceClass"]

    assert outcome.status == "success"
    assert outcome.provider_data["mode"] == "swap" and outcome.provider_data["instance"] == "prod-db"
    assert outcome.endpoint.startswith("prod-db.")
    assert previous in outcome.details
    restored = outcome.steps[1].split()[-1]
    assert outcome.steps == [
        "checked the snapshot and the current database",
        f"started restoring {backup.id} to new DB instance {restored}",
        f"{restored} is available",
        "prod-db is ready to be renamed",
        f"renamed prod-db to {previous}",
        f"{previous} is available",
        f"renamed {restored} to prod-db",
        "prod-db serves the restored data",
    ]
    assert [e.data["step"] for e in events if e.kind == "backup.restore_step"] == outcome.steps
    assert (
        f"delete-db-instance --db-instance-identifier {previous} --skip-final-snapshot"
        in outcome.provider_data["cleanup"]
    )


def test_side_by_side_leaves_the_original_alone_and_reports_the_new_endpoint(
    rds, rds_instance, rds_context, rds_plugins
):
    context = rds_context(restore_mode="side-by-side")
    backup = rds_plugins.backup_create(context, "manual", [])

    outcome = rds_plugins.backup_restore(context, backup)

    restored = outcome.provider_data["restored_instance"]
    found = instances(rds)
    assert set(found) == {"prod-db", restored}
    assert tags_of(rds, found["prod-db"]["DBInstanceArn"]) == {"team": "payments"}
    assert tags_of(rds, found[restored]["DBInstanceArn"])["faber:restored-from"] == backup.id
    assert outcome.endpoint.startswith(f"{restored}.")
    assert outcome.original_unchanged is True
    assert outcome.steps[-1] == f"{restored} is available"
    assert any(
        "modify-db-instance --db-instance-identifier prod-db" in c for c in outcome.provider_data["swap_commands"]
    )


def test_restore_refuses_a_snapshot_faber_did_not_make(rds, rds_instance, rds_context, rds_plugins):
    rds.create_db_snapshot(DBSnapshotIdentifier="hand-made", DBInstanceIdentifier="prod-db")
    context = rds_context()
    backup = rds_plugins.backup_create(context, "manual", [])

    with pytest.raises(RestoreFailed) as caught:
        rds_plugins.backup_restore(context, backup.model_copy(update={"id": "hand-made"}))

    assert "was not made by faber" in caught.value.message
    assert caught.value.suggestions[0] == "Nothing was changed: prod-db still serves the database."
    assert set(instances(rds)) == {"prod-db"}


def test_a_wait_that_times_out_midway_reports_the_state_and_the_manual_swap(
    rds, rds_instance, rds_context, rds_plugins
):
    """A stopped original never becomes available, so the swap cannot start; the copy is left beside it."""
    context = rds_context(wait_timeout_seconds=1, poll_interval_seconds=0.3)
    backup = rds_plugins.backup_create(context, "manual", [])
    rds.stop_db_instance(DBInstanceIdentifier="prod-db")

    with pytest.raises(RestoreFailed) as caught:
        rds_plugins.backup_restore(context, backup)

    error = caught.value
    restored = error.result["restored_identifier"]
    previous = error.result["previous_identifier"]
    assert set(instances(rds)) == {"prod-db", restored}, "nothing renamed; the copy stays for a manual swap"
    assert error.result["failed_step"] == "prod-db is ready to be renamed"
    assert error.result["steps_completed"][-1] == f"{restored} is available"
    assert "'stopped'" in error.message
    assert error.suggestions[0].startswith("prod-db is unchanged and still serves the database")
    commands = "\n".join(error.suggestions)
    endpoint = context.settings.backup.model_dump()["endpoint_url"]
    assert (
        f"aws rds modify-db-instance --db-instance-identifier prod-db --new-db-instance-identifier {previous} "
        f"--apply-immediately --region {REGION} --endpoint-url {endpoint}"
    ) in commands
    assert f"--db-instance-identifier {restored} --new-db-instance-identifier prod-db" in commands
    assert f"delete-db-instance --db-instance-identifier {restored} --skip-final-snapshot" in commands


def test_aurora_cluster_snapshot_restore_and_swap(rds, rds_context, rds_plugins):
    rds.create_db_cluster(
        DBClusterIdentifier="prod-aurora",
        Engine="aurora-postgresql",
        MasterUsername="app",
        MasterUserPassword="not-a-real-secret-1",
    )
    rds.create_db_instance(
        DBInstanceIdentifier="prod-aurora-1",
        DBClusterIdentifier="prod-aurora",
        Engine="aurora-postgresql",
        DBInstanceClass="db.r6g.large",
    )
    context = rds_context(db_instance_identifier=None, db_cluster_identifier="prod-aurora")
    backup = rds_plugins.backup_create(context, "pre-migration backup", [])
    assert rds.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=backup.id)["DBClusterSnapshots"]
    assert [b.id for b in rds_plugins.backup_list(context)] == [backup.id]

    outcome = rds_plugins.backup_restore(context, backup)

    clusters = {c["DBClusterIdentifier"]: c for c in rds.describe_db_clusters()["DBClusters"]}
    previous = outcome.provider_data["previous_cluster"]
    assert set(clusters) == {"prod-aurora", previous}
    assert tags_of(rds, clusters["prod-aurora"]["DBClusterArn"])["faber:restored-from"] == backup.id
    assert "faber:restored-from" not in tags_of(rds, clusters[previous]["DBClusterArn"])
    # The restored cluster got an instance like the original's, so it can serve once swapped in.
    # (moto keeps a member's old cluster name after a cluster rename; AWS renames it along.)
    restored = outcome.steps[1].split()[-1]
    [member] = rds.describe_db_instances(DBInstanceIdentifier=f"{restored}-1")["DBInstances"]
    assert member["DBInstanceClass"] == "db.r6g.large" and member["Engine"] == "aurora-postgresql"
    assert outcome.endpoint.startswith("prod-aurora.cluster-")
    assert f"delete-db-cluster --db-cluster-identifier {previous}" in outcome.provider_data["cleanup"]


def test_the_restored_instance_keeps_the_originals_parameter_group_and_network(
    rds, new_instance, rds_context, rds_plugins
):
    rds.create_db_parameter_group(
        DBParameterGroupName="prod-pg", DBParameterGroupFamily="postgres16", Description="tuned for prod"
    )
    new_instance(DBParameterGroupName="prod-pg", Port=6543, MultiAZ=True)
    context = rds_context()
    backup = rds_plugins.backup_create(context, "manual", [])

    rds_plugins.backup_restore(context, backup)

    serving = rds.describe_db_instances(DBInstanceIdentifier="prod-db")["DBInstances"][0]
    assert tags_of(rds, serving["DBInstanceArn"]) == SWAPPED_IN_TAGS | {"faber:restored-from": backup.id}
    assert [g["DBParameterGroupName"] for g in serving["DBParameterGroups"]] == ["prod-pg"]
    assert serving["Endpoint"]["Port"] == 6543 and serving["MultiAZ"] is True


def test_a_missing_original_is_looked_for_under_the_newest_pre_rollback_name(
    rds, rds_instance, new_instance, rds_context, rds_plugins
):
    # As a rollback killed between its renames leaves it, beside an older rollback's kept original.
    context = rds_context()
    backup = rds_plugins.backup_create(context, "manual", [])
    new_instance("prod-db-pre-rollback-20250101-000000")
    new_instance("prod-db-restored-20250102-000000")
    rds.modify_db_instance(
        DBInstanceIdentifier="prod-db",
        NewDBInstanceIdentifier="prod-db-pre-rollback-20250102-000000",
        ApplyImmediately=True,
    )
    before = set(instances(rds))

    with pytest.raises(RestoreFailed) as caught:
        rds_plugins.backup_restore(context, backup)

    error = caught.value
    assert "left it as prod-db-pre-rollback-20250102-000000" in error.message
    assert (error.result["previous_identifier"], error.result["restored_identifier"]) == (
        "prod-db-pre-rollback-20250102-000000",
        "prod-db-restored-20250102-000000",
    )
    assert error.suggestions[0].startswith("prod-db was renamed to prod-db-pre-rollback-20250102-000000;")
    assert set(instances(rds)) == before, "nothing was changed"


def test_status_lists_the_originals_finished_swaps_kept_as_kept_and_the_one_a_killed_swap_moved_as_not(
    rds, rds_instance, new_instance, rds_context, rds_plugins
):
    # A finished swap keeps <id>-pre-rollback-<ts> on purpose (billed); faber status did not list it.
    new_instance("prod-db-pre-rollback-20250101-000000")
    new_instance("prod-db-pre-rollback-20250102-000000")
    new_instance("other-db-pre-rollback-20250102-000000")  # another instance's, not this target's
    context = rds_context()

    kept = rds_plugins.backup_leftovers(context)

    assert [(k.name, k.kept) for k in kept] == [
        ("prod-db-pre-rollback-20250101-000000", True),
        ("prod-db-pre-rollback-20250102-000000", True),
    ]
    assert kept[0].details.startswith("kept on purpose (available): prod-db as it was when a rollback started at ")
    assert "2025-01-01 00:00:00 UTC" in kept[0].details
    assert any(
        "delete-db-instance --db-instance-identifier prod-db-pre-rollback-20250101-000000 --skip-final-snapshot" in c
        for c in kept[0].commands
    ), kept[0].commands

    # Killed between its renames: the newest is the original moved away, not a kept one.
    rds.modify_db_instance(
        DBInstanceIdentifier="prod-db",
        NewDBInstanceIdentifier="prod-db-pre-rollback-20250103-000000",
        ApplyImmediately=True,
    )

    found = rds_plugins.backup_leftovers(context)

    assert [(k.name, k.kept) for k in found] == [
        ("prod-db-pre-rollback-20250103-000000", False),
        ("prod-db-pre-rollback-20250101-000000", True),
        ("prod-db-pre-rollback-20250102-000000", True),
    ]
    assert found[0].details.startswith("prod-db was renamed to prod-db-pre-rollback-20250103-000000;")
