"""What lives on a PostgreSQL database rather than in it, which its archive leaves out: the
database's settings (``ALTER DATABASE … SET``, and ``ALTER ROLE … IN DATABASE … SET`` for each
role), its comment, its grants (``GRANT … ON DATABASE``) and its connection limit.

``pg_dump`` writes them only with ``--create``, as SQL naming the database as it was called at
the backup; faber's archives are made without it. So a backup records them in its manifest
(``private_data.database_properties``, :data:`RECORD`), read from the catalogs just before the
dump under faber's lock, written with the archive's checksum and the applied migrations and
validated with them when the backup is restored. A setting's value may be a secret (a key an
application or a row-level security policy reads with ``current_setting``): the record's
``private_data``, like the archive, is kept in the private backup folder and never shown; what a
listing shows (``provider_data.database_properties``, :func:`shown`) names each setting without
its value, and a restore's reasons from the server have the value masked (:func:`tried`).

A restore compares the record with what the database has now and changes only what differs
(:func:`changes`): a setting added since is reset, one changed or removed is set back, the
comment, the connection limit and the grants are put back as they were. Each change is first
tried in a transaction that is rolled back (:func:`tried`): what faber's user may not change
(another role's settings without ``CREATEROLE``, a superuser-only parameter, anything when it is
not a member of the database's owner) is left as it is and named in the restore's result; the
rest goes into the restore's own transaction, so it commits with the archive or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from faber_core.context import RunContext
from faber_core.errors import RestoreFailed
from faber_core.models import BackupRecord

RECORD = "database_properties"
"""The key of a pg_dump manifest's ``private_data`` holding :class:`DatabaseProperties`, of its
``provider_data`` holding what is shown of them (:func:`shown`), and of a restore's ``provider_data``
holding what it restored."""

# Parameters whose value is a list PostgreSQL stores with its items double-quoted where needed
# (GUC_LIST_QUOTE): each item is set as a literal of its own, as pg_dump does.
_LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)


class _Recorded(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Setting(_Recorded):
    role: str | None
    """The role it applies to in this database; None: every role (``ALTER DATABASE … SET``)."""
    name: str
    value: str


class Grant(_Recorded):
    grantee: str | None
    """None: PUBLIC."""
    privilege: Literal["CREATE", "TEMPORARY", "CONNECT"]
    grantable: bool
    grantor: str


class DatabaseProperties(_Recorded):
    owner: str
    comment: str | None
    connection_limit: int
    settings: list[Setting]
    grants: list[Grant]
    """Every privilege held on the database, the owner's and PUBLIC's default ones included."""


_READ = """
SELECT pg_catalog.pg_get_userbyid(d.datdba), pg_catalog.shobj_description(d.oid, 'pg_database'), d.datconnlimit,
       (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_array(
                   CASE s.setrole WHEN 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(s.setrole) END, c.setting)), '[]')
        FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c(setting) WHERE s.setdatabase = d.oid),
       (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_array(
                   CASE a.grantee WHEN 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
                   a.privilege_type, a.is_grantable, pg_catalog.pg_get_userbyid(a.grantor))), '[]')
        FROM pg_catalog.aclexplode(COALESCE(d.datacl, pg_catalog.acldefault('d', d.datdba))) a)
FROM pg_catalog.pg_database d WHERE d.datname = %s
"""
"""Settings as ``[role or null, "name=value"]``, grants as ``[grantee or null, privilege, grantable,
grantor]``; a database without grants of its own holds the defaults (``acldefault``)."""


def read(conn: psycopg.Connection, database: str) -> DatabaseProperties:
    """The properties of ``database`` as the server has them now (its catalogs are shared: any
    database's session reads them)."""
    owner, comment, limit, settings, grants = conn.execute(_READ, [database]).fetchone()
    return DatabaseProperties(
        owner=owner,
        comment=comment,
        connection_limit=limit,
        settings=sorted(
            (
                Setting(role=role, name=setting.partition("=")[0], value=setting.partition("=")[2])
                for role, setting in settings
            ),
            key=lambda s: (s.role or "", s.name),
        ),
        grants=[
            Grant(grantee=grantee, privilege=privilege, grantable=grantable, grantor=grantor)
            for grantee, privilege, grantable, grantor in sorted(grants, key=lambda g: (g[0] or "", g[1], g[3]))
        ],
    )


def created(owner: str) -> DatabaseProperties:
    """The properties of a database ``CREATE DATABASE … OWNER owner`` has just made: its owner
    holds every privilege, PUBLIC may connect and create temporary tables."""
    grants = [
        Grant(grantee=grantee, privilege=privilege, grantable=False, grantor=owner)
        for grantee, privileges in ((owner, ("CREATE", "TEMPORARY", "CONNECT")), (None, ("TEMPORARY", "CONNECT")))
        for privilege in privileges
    ]
    return DatabaseProperties(owner=owner, comment=None, connection_limit=-1, settings=[], grants=grants)


def shown(properties: DatabaseProperties) -> dict[str, JsonValue]:
    """What a backup's listing shows of ``properties``: all but the settings' values."""
    return properties.model_dump(mode="json", exclude={"settings": {"__all__": {"value"}}})


def recorded(backup: BackupRecord) -> DatabaseProperties | None:
    """The properties ``backup`` recorded; None for a backup taken by a faber that did not record
    them. A record that is not one (an edited manifest) stops the restore before anything changes."""
    record = backup.private_data.get(RECORD)
    if record is None:
        return None
    try:
        return DatabaseProperties.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        raise RestoreFailed(
            f"Backup {backup.id}'s manifest has an unreadable {RECORD} ({first['msg']} at {where}); the database "
            "is unchanged",
            suggestions=["Restore from another backup: faber backups " + backup.environment],
            backup_id=backup.id,
        ) from None


@dataclass
class Change:
    """One property to put back: the statements that do it, or why it cannot be."""

    what: str
    statements: list[sql.Composable] = field(default_factory=list)
    refused: str | None = None
    value: str | None = None
    """The setting's value the statements set, which the server's reason for refusing them may
    quote, and must not show (:func:`tried`)."""


def changes(database: str, now: DatabaseProperties, then: DatabaseProperties) -> list[Change]:
    """What turns database ``database``'s properties from ``now`` into ``then``: nothing that is
    already as recorded."""
    name = sql.Identifier(database)
    found: list[Change] = []
    current = {(s.role, s.name): s.value for s in now.settings}
    wanted = {(s.role, s.name): s.value for s in then.settings}
    for role, setting in sorted(current.keys() | wanted.keys(), key=lambda key: (key[0] or "", key[1])):
        if current.get((role, setting)) == wanted.get((role, setting)):
            continue
        on = (
            sql.SQL("ALTER DATABASE {}").format(name)
            if role is None
            else sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), name)
        )
        what = f"setting {setting}" + (f" of role {role}" if role is not None else "")
        value = wanted.get((role, setting))
        if value is None:
            found.append(Change(f"{what} (added since)", [on + sql.SQL(" RESET {}").format(sql.Identifier(setting))]))
        else:
            statement = on + sql.SQL(" SET {} TO {}").format(sql.Identifier(setting), _value(setting, value))
            found.append(Change(what, [statement], value=value))
    if now.comment != then.comment:
        found.append(
            Change("comment", [sql.SQL("COMMENT ON DATABASE {} IS {}").format(name, sql.Literal(then.comment))])
        )
    if now.connection_limit != then.connection_limit:
        found.append(
            Change(
                "connection limit",
                [sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(name, sql.Literal(then.connection_limit))],
            )
        )
    if set(now.grants) != set(then.grants):
        found += _grants(name, now, then)
    return found


def _grants(name: sql.Identifier, now: DatabaseProperties, then: DatabaseProperties) -> list[Change]:
    """Every privilege on the database revoked, then the recorded ones granted again. A grant is
    recorded as made by the database's owner (whoever runs it, a superuser included): one another
    role made (with a grant option it held) cannot be made again as it was, and is named instead."""
    revoked = sql.SQL(", ").join(_role(grantee) for grantee in sorted({g.grantee or "" for g in now.grants}))
    statements: list[sql.Composable] = [sql.SQL("REVOKE ALL ON DATABASE {} FROM {} CASCADE").format(name, revoked)]
    refused = []
    by_owner = {}
    for grant in then.grants:
        if grant.grantor != then.owner:
            refused.append(
                Change(
                    f"grant of {grant.privilege} to {grant.grantee or 'PUBLIC'} by {grant.grantor}",
                    refused=f"only grants by the database's owner {then.owner} are restored",
                )
            )
            continue
        by_owner.setdefault((grant.grantee or "", grant.grantable), []).append(grant.privilege)
    for (grantee, grantable), privileges in sorted(by_owner.items()):
        statements.append(
            sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(", ").join(map(sql.SQL, sorted(privileges))),
                name,
                _role(grantee),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )
    return [Change("grants", statements), *refused]


def _role(name: str) -> sql.Composable:
    return sql.Identifier(name) if name else sql.SQL("PUBLIC")


def _value(setting: str, value: str) -> sql.Composable:
    """The SQL for ``value`` of parameter ``setting`` as the catalog stores it."""
    if setting.lower() not in _LIST_SETTINGS:
        return sql.Literal(value)
    return sql.SQL(", ").join(map(sql.Literal, _list_items(value)))


def _list_items(value: str) -> list[str]:
    """The items of a list parameter's stored value: separated by commas, each bare or
    double-quoted (a doubled quote inside stands for one). A value not written that way, which
    PostgreSQL never stores, is taken as one item."""
    items: list[str] = []
    position = 0
    while match := _LIST_ITEM.match(value, position):
        quoted, bare, separator = match.groups()
        items.append(quoted.replace('""', '"') if quoted is not None else bare)
        if not separator:
            return items
        position = match.end()
    return [value]


_LIST_ITEM = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^,"]*?))\s*(,|$)')


@dataclass
class Tried:
    """The changes the server accepted in a trial, and those it refused (``what: why``)."""

    accepted: list[Change]
    refused: list[str]


def tried(context: RunContext, conn: psycopg.Connection, wanted: Iterable[Change]) -> Tried:
    """Try each change, one savepoint each, in a transaction on ``conn`` (autocommit) that is
    rolled back: the server's own privilege rules say what faber's user may change. A refusal
    gives the server's reason, the setting's value masked (``invalid value for parameter "x":
    "…"`` quotes it)."""
    outcome = Tried([], [])
    with conn.transaction(force_rollback=True):
        # As the restore's own transaction: a migration being rolled back may have made sessions
        # default to read-only, and that is one of the settings to put back.
        conn.execute("SET TRANSACTION READ WRITE")
        for change in wanted:
            if change.refused is not None:
                outcome.refused.append(f"{change.what}: {change.refused}")
                continue
            try:
                with conn.transaction():
                    for statement in change.statements:
                        conn.execute(statement)
            except psycopg.Error as exc:
                said = str(exc).strip().splitlines() or ["refused by the server"]
                reason = _masked(context.redactor.redact(said[0]), change.value)
                outcome.refused.append(f"{change.what}: {reason}")
            else:
                outcome.accepted.append(change)
    return outcome


def _masked(reason: str, value: str | None) -> str:
    """``reason`` with ``value`` wherever it stands on its own (not inside a word: a value ``on``
    leaves "permission" as it is) replaced by ``<value>``."""
    if not value:
        return reason
    return re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "<value>", reason)


@dataclass
class Restoring:
    """What an in-place restore does to the database's properties: ``script``, the statements for
    its transaction, and what to tell of it."""

    script: str = ""
    restored: list[str] = field(default_factory=list)
    not_restored: list[str] = field(default_factory=list)
    recorded: bool = True

    def details(self) -> str:
        """What the restore's details add."""
        if not self.recorded:
            return (
                "; the database's own settings, comment, grants and connection limit are left as they are: the "
                "backup does not record them (taken by an older faber)"
            )
        if not self.not_restored:
            return ""
        return "; database properties not restored, left as they are: " + "; ".join(self.not_restored)

    def provider_data(self) -> dict[str, JsonValue]:
        return {RECORD: {"recorded": self.recorded, "restored": self.restored, "not_restored": self.not_restored}}


def restoring_in_place(context: RunContext, conn: psycopg.Connection, backup: BackupRecord) -> Restoring:
    """The changes an in-place restore of ``backup`` makes to the properties of ``conn``'s database."""
    then = recorded(backup)
    if then is None:
        return Restoring(recorded=False)
    (database,) = conn.execute("SELECT pg_catalog.current_database()").fetchone()
    outcome = tried(context, conn, changes(database, read(conn, database), then))
    script = "".join(
        statement.as_string(conn) + ";\n" for change in outcome.accepted for statement in change.statements
    )
    return Restoring(script, [change.what for change in outcome.accepted], outcome.refused)
