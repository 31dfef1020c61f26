"""What faber backs up: one RDS DB instance, or one Aurora cluster (cluster snapshots).

Both offer the same operations, so snapshots, retention and restore are written once against
:class:`Target`, and the API differences (names of calls, fields, the instances an Aurora
cluster needs before it serves) live here.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from faber_rds_backup.aws import RdsClient, aws_cli
from faber_rds_backup.settings import RdsBackupSettings

# Status values after which waiting is pointless (the resource will never become available).
FAILED_STATES = frozenset(
    {
        "failed",
        "deleted",
        "deleting",
        "incompatible-restore",
        "incompatible-parameters",
        "inaccessible-encryption-credentials",
    }
)


@dataclass(frozen=True)
class Snapshot:
    id: str
    status: str
    created_at: dt.datetime
    size_gib: int | None
    percent_progress: int | None
    tags: dict[str, str] = field(default_factory=dict)


def _tags(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {item["Key"]: item.get("Value", "") for item in items or []}


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _snapshot_time(raw: dict[str, Any]) -> dt.datetime:
    # A snapshot still being created may not carry its creation time yet.
    value = raw.get("SnapshotCreateTime") or raw.get("OriginalSnapshotCreateTime")
    return value if isinstance(value, dt.datetime) else dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Listed:
    """One DB instance (or cluster) of the region, as the listing of them all shows it."""

    status: str
    tags: dict[str, str]


class Target(ABC):
    """The operations faber needs on the backed-up resource; see the two subclasses."""

    kind: str
    noun: str

    def __init__(self, client: RdsClient, settings: RdsBackupSettings) -> None:
        self.client = client
        self.settings = settings
        self.identifier = settings.target_identifier

    def cli(self, *args: str) -> str:
        return aws_cli(self.settings, *args)

    @abstractmethod
    def describe(self, identifier: str | None = None) -> dict[str, Any]: ...

    status_field = "Status"

    @abstractmethod
    def existing(self) -> dict[str, Listed]:
        """Every DB instance (or cluster) of the region, the target's or not, by identifier."""

    def _listed(self, raw: dict[str, Any]) -> Listed:
        return Listed(str(raw.get(self.status_field, "unknown")), _tags(raw.get("TagList")))

    def status(self, identifier: str) -> str:
        return str(self.describe(identifier).get(self.status_field, "unknown"))

    @abstractmethod
    def endpoint(self, identifier: str) -> str | None: ...

    @abstractmethod
    def create_snapshot(self, snapshot_id: str, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def snapshot(self, snapshot_id: str) -> Snapshot: ...

    @abstractmethod
    def snapshots(self) -> list[Snapshot]: ...

    @abstractmethod
    def delete_snapshot(self, snapshot_id: str) -> None: ...

    @abstractmethod
    def restore(self, snapshot_id: str, new_identifier: str, like: dict[str, Any], tags: dict[str, str]) -> None: ...

    def members(self, identifier: str) -> list[str]:
        """DB instances that must be available before ``identifier`` serves (an Aurora cluster's)."""
        return []

    def member_status(self, instance_identifier: str) -> str:
        found = self.client.describe_db_instances(DBInstanceIdentifier=instance_identifier)
        return str(found["DBInstances"][0].get("DBInstanceStatus", "unknown"))

    @abstractmethod
    def rename(self, identifier: str, new_identifier: str) -> None: ...

    @abstractmethod
    def rename_command(self, identifier: str, new_identifier: str) -> str: ...

    @abstractmethod
    def describe_command(self, identifier: str) -> str: ...

    def snapshot_describe_command(self, snapshot_id: str) -> str:
        if self.kind == "cluster":
            return self.cli("describe-db-cluster-snapshots", "--db-cluster-snapshot-identifier", snapshot_id)
        return self.cli("describe-db-snapshots", "--db-snapshot-identifier", snapshot_id)

    def snapshot_delete_command(self, snapshot_id: str) -> str:
        if self.kind == "cluster":
            return self.cli("delete-db-cluster-snapshot", "--db-cluster-snapshot-identifier", snapshot_id)
        return self.cli("delete-db-snapshot", "--db-snapshot-identifier", snapshot_id)

    @abstractmethod
    def delete_command(self, identifier: str) -> str: ...


class InstanceTarget(Target):
    kind = "instance"
    noun = "DB instance"
    status_field = "DBInstanceStatus"

    def describe(self, identifier: str | None = None) -> dict[str, Any]:
        found = self.client.describe_db_instances(DBInstanceIdentifier=identifier or self.identifier)
        return found["DBInstances"][0]

    def existing(self) -> dict[str, Listed]:
        pages = self.client.get_paginator("describe_db_instances").paginate()
        return {raw["DBInstanceIdentifier"]: self._listed(raw) for page in pages for raw in page["DBInstances"]}

    def endpoint(self, identifier: str) -> str | None:
        endpoint = self.describe(identifier).get("Endpoint") or {}
        return f"{endpoint['Address']}:{endpoint.get('Port')}" if endpoint.get("Address") else None

    def create_snapshot(self, snapshot_id: str, tags: dict[str, str]) -> None:
        self.client.create_db_snapshot(
            DBSnapshotIdentifier=snapshot_id, DBInstanceIdentifier=self.identifier, Tags=_tag_list(tags)
        )

    @staticmethod
    def _snapshot(raw: dict[str, Any]) -> Snapshot:
        return Snapshot(
            id=raw["DBSnapshotIdentifier"],
            status=raw.get("Status", "unknown"),
            created_at=_snapshot_time(raw),
            size_gib=raw.get("AllocatedStorage"),
            percent_progress=raw.get("PercentProgress"),
            tags=_tags(raw.get("TagList")),
        )

    def snapshot(self, snapshot_id: str) -> Snapshot:
        found = self.client.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)
        return self._snapshot(found["DBSnapshots"][0])

    def snapshots(self) -> list[Snapshot]:
        pages = self.client.get_paginator("describe_db_snapshots").paginate(
            DBInstanceIdentifier=self.identifier, SnapshotType="manual"
        )
        return [self._snapshot(raw) for page in pages for raw in page["DBSnapshots"]]

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.client.delete_db_snapshot(DBSnapshotIdentifier=snapshot_id)

    def restore(self, snapshot_id: str, new_identifier: str, like: dict[str, Any], tags: dict[str, str]) -> None:
        """Restore with the original's size, network and parameters, so the copy can take its place."""
        options: dict[str, Any] = {
            "DBInstanceClass": like.get("DBInstanceClass"),
            "DBSubnetGroupName": (like.get("DBSubnetGroup") or {}).get("DBSubnetGroupName"),
            "VpcSecurityGroupIds": [g["VpcSecurityGroupId"] for g in like.get("VpcSecurityGroups") or []] or None,
            "DBParameterGroupName": next(
                (g["DBParameterGroupName"] for g in like.get("DBParameterGroups") or []), None
            ),
            "OptionGroupName": next(
                (
                    g["OptionGroupName"]
                    for g in like.get("OptionGroupMemberships") or []
                    if not g["OptionGroupName"].startswith("default:")
                ),
                None,
            ),
            "MultiAZ": like.get("MultiAZ"),
            "PubliclyAccessible": like.get("PubliclyAccessible"),
            "Port": (like.get("Endpoint") or {}).get("Port"),
            "StorageType": like.get("StorageType"),
            "CopyTagsToSnapshot": like.get("CopyTagsToSnapshot"),
        }
        self.client.restore_db_instance_from_db_snapshot(
            DBInstanceIdentifier=new_identifier,
            DBSnapshotIdentifier=snapshot_id,
            Tags=_tag_list(tags),
            **{key: value for key, value in options.items() if value is not None},
        )

    def rename(self, identifier: str, new_identifier: str) -> None:
        self.client.modify_db_instance(
            DBInstanceIdentifier=identifier, NewDBInstanceIdentifier=new_identifier, ApplyImmediately=True
        )

    def rename_command(self, identifier: str, new_identifier: str) -> str:
        return self.cli(
            "modify-db-instance",
            "--db-instance-identifier",
            identifier,
            "--new-db-instance-identifier",
            new_identifier,
            "--apply-immediately",
        )

    def describe_command(self, identifier: str) -> str:
        return self.cli("describe-db-instances", "--db-instance-identifier", identifier)

    def delete_command(self, identifier: str) -> str:
        return self.cli("delete-db-instance", "--db-instance-identifier", identifier, "--skip-final-snapshot")


class ClusterTarget(Target):
    kind = "cluster"
    noun = "DB cluster"

    def describe(self, identifier: str | None = None) -> dict[str, Any]:
        found = self.client.describe_db_clusters(DBClusterIdentifier=identifier or self.identifier)
        return found["DBClusters"][0]

    def existing(self) -> dict[str, Listed]:
        pages = self.client.get_paginator("describe_db_clusters").paginate()
        return {raw["DBClusterIdentifier"]: self._listed(raw) for page in pages for raw in page["DBClusters"]}

    def endpoint(self, identifier: str) -> str | None:
        cluster = self.describe(identifier)
        return f"{cluster['Endpoint']}:{cluster.get('Port')}" if cluster.get("Endpoint") else None

    def create_snapshot(self, snapshot_id: str, tags: dict[str, str]) -> None:
        self.client.create_db_cluster_snapshot(
            DBClusterSnapshotIdentifier=snapshot_id, DBClusterIdentifier=self.identifier, Tags=_tag_list(tags)
        )

    @staticmethod
    def _snapshot(raw: dict[str, Any]) -> Snapshot:
        return Snapshot(
            id=raw["DBClusterSnapshotIdentifier"],
            status=raw.get("Status", "unknown"),
            created_at=_snapshot_time(raw),
            size_gib=raw.get("AllocatedStorage"),
            percent_progress=raw.get("PercentProgress"),
            tags=_tags(raw.get("TagList")),
        )

    def snapshot(self, snapshot_id: str) -> Snapshot:
        found = self.client.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=snapshot_id)
        return self._snapshot(found["DBClusterSnapshots"][0])

    def snapshots(self) -> list[Snapshot]:
        pages = self.client.get_paginator("describe_db_cluster_snapshots").paginate(
            DBClusterIdentifier=self.identifier, SnapshotType="manual"
        )
        return [self._snapshot(raw) for page in pages for raw in page["DBClusterSnapshots"]]

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.client.delete_db_cluster_snapshot(DBClusterSnapshotIdentifier=snapshot_id)

    def restore(self, snapshot_id: str, new_identifier: str, like: dict[str, Any], tags: dict[str, str]) -> None:
        """Restore the cluster, then give it one instance per instance of the original (same class).

        An Aurora cluster restored from a snapshot has no instances and so serves nothing.
        """
        options: dict[str, Any] = {
            "EngineVersion": like.get("EngineVersion"),
            "DBSubnetGroupName": like.get("DBSubnetGroup"),
            "VpcSecurityGroupIds": [g["VpcSecurityGroupId"] for g in like.get("VpcSecurityGroups") or []] or None,
            "DBClusterParameterGroupName": like.get("DBClusterParameterGroup"),
            "Port": like.get("Port"),
        }
        self.client.restore_db_cluster_from_snapshot(
            DBClusterIdentifier=new_identifier,
            SnapshotIdentifier=snapshot_id,
            Engine=like["Engine"],
            Tags=_tag_list(tags),
            **{key: value for key, value in options.items() if value is not None},
        )
        for number, member in enumerate(self._member_classes(like), start=1):
            self.client.create_db_instance(
                DBInstanceIdentifier=f"{new_identifier}-{number}",
                DBClusterIdentifier=new_identifier,
                Engine=like["Engine"],
                DBInstanceClass=member,
                Tags=_tag_list(tags),
            )

    def _member_classes(self, cluster: dict[str, Any]) -> list[str]:
        classes = []
        for member in cluster.get("DBClusterMembers") or []:
            instance = self.client.describe_db_instances(DBInstanceIdentifier=member["DBInstanceIdentifier"])
            classes.append(instance["DBInstances"][0]["DBInstanceClass"])
        return classes or ["db.r6g.large"]

    def members(self, identifier: str) -> list[str]:
        return [m["DBInstanceIdentifier"] for m in self.describe(identifier).get("DBClusterMembers") or []]

    def rename(self, identifier: str, new_identifier: str) -> None:
        self.client.modify_db_cluster(
            DBClusterIdentifier=identifier, NewDBClusterIdentifier=new_identifier, ApplyImmediately=True
        )

    def rename_command(self, identifier: str, new_identifier: str) -> str:
        return self.cli(
            "modify-db-cluster",
            "--db-cluster-identifier",
            identifier,
            "--new-db-cluster-identifier",
            new_identifier,
            "--apply-immediately",
        )

    def describe_command(self, identifier: str) -> str:
        return self.cli("describe-db-clusters", "--db-cluster-identifier", identifier)

    def delete_command(self, identifier: str) -> str:
        return f"delete the instances listed by `{self.describe_command(identifier)}`, then " + self.cli(
            "delete-db-cluster", "--db-cluster-identifier", identifier, "--skip-final-snapshot"
        )


def target_for(client: RdsClient, settings: RdsBackupSettings) -> Target:
    return ClusterTarget(client, settings) if settings.is_cluster else InstanceTarget(client, settings)
