"""Reading migration SQL with PostgreSQL's own parser (pglast), in time linear in its size.

A script is split once into statements by a scanner that knows PostgreSQL's quoting (strings,
``E''`` strings, quoted identifiers, dollar quotes, comments). Data statements (INSERT, UPDATE,
DELETE, SELECT, ...) that differ only in their plain literals (``VALUES (1, 'a')`` and
``(2, 'b')``) have the same parse tree shape: each shape is parsed once, on a copy whose
literals are emptied (``0``, ``''``), so a data migration of 690,000 single-row INSERTs costs a
few parses, not 690,000. Other statements are parsed as written (``VACUUM (FULL 1)`` keeps its 1). Where the scanner
cannot know where a statement ends (``BEGIN ATOMIC`` bodies, rule actions in parentheses), the
shape does not parse and the whole script is split by the parser instead.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# pglast is imported where a script is parsed: reading the status, checking health or taking a
# backup never parses SQL, and the parser costs tens of milliseconds to import.
if TYPE_CHECKING:
    import psycopg
    from pglast import ast

# Tokens in which ';' does not end a statement; every alternative starts with its own character,
# so the regular expression engine skips plain code at C speed.
_TOKEN = re.compile(
    r"""
      ;
    | '[^']*(?:''[^']*)*'
    | "[^"]*(?:""[^"]*)*"
    | --[^\n]*
    | /\*
    | \$(?:[^\W\d]\w*)?\$
    | ['"]
    """,
    re.VERBOSE,
)
# A whole statement made of plain code and plain strings only (most of a bulk data migration),
# matched in one step; anything else (comments, E'' or prefixed strings, quoted names, $) goes
# token by token.
_SIMPLE_STATEMENT = re.compile(r"""\s*+((?:[^;'"$/\-]++|(?<![\w$&])'[^']*+(?:''[^']*+)*+'|/(?!\*)|-(?!-))++);""")
_PLAIN_STRING = re.compile(r"'[^']*(?:''[^']*)*'")
_ESCAPE_STRING = re.compile(r"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.DOTALL)
_BLOCK_COMMENT_MARK = re.compile(r"/\*|\*/")
# A numeric literal standing alone (not part of a name, a parameter $1 or a longer token).
_NUMBER = re.compile(r"\d(?<![\w$.]\d)\d*(?:\.\d*)?(?:[eE][+-]?\d+)?(?![\w$.])|\.\d(?<![\w$.]\.\d)\d*(?![\w$.])")
# Private-use characters that stand for kept tokens and statement ends in the shapes' text.
_KEPT_OPEN, _KEPT_CLOSE, _STATEMENT_END = "\ue000", "\ue001", "\ue002"
_KEPT = re.compile(f"{_KEPT_OPEN}([a-z]+){_KEPT_CLOSE}")
# Statements whose literal values change neither how they are classified nor whether they parse.
_DATA_STATEMENT = re.compile(r"\s*(?:INSERT|UPDATE|DELETE|SELECT|WITH|VALUES|MERGE)\b", re.IGNORECASE)
_IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


@dataclass(frozen=True)
class Script:
    """A script split into statements, each with its parse tree (shared by statements of one shape)."""

    sql: str
    bounds: array
    """Start and end offset (characters) of each statement, flattened: [start0, end0, start1, ...]."""
    shapes: array
    """For each statement, the index of its parse tree in :attr:`nodes`."""
    nodes: tuple[ast.Node, ...]
    memo: dict[str, object] = field(default_factory=dict, compare=False, repr=False)
    """What other modules compute from the script (its analysis), kept as long as the script is cached."""

    def __len__(self) -> int:
        return len(self.shapes)

    def statement(self, index: int) -> str:
        return self.sql[self.bounds[2 * index] : self.bounds[2 * index + 1]]

    def statements(self) -> Iterator[str]:
        return (self.statement(index) for index in range(len(self)))

    def node(self, index: int) -> ast.Node:
        return self.nodes[self.shapes[index]]

    @property
    def transactional(self) -> bool:
        return not any(_needs_no_transaction(node) for node in self.nodes)


class _ScriptCache:
    """The parsed scripts of the newest migrations, least recently used dropped first, while their
    text totals at most ``max_chars``: every pending migration of a long history stays parsed
    across the steps of a run (analysis, lint, preview, apply), and a few huge data migrations
    are not all kept in memory at once."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.scripts: OrderedDict[str, Script] = OrderedDict()
        self.chars = 0

    def get(self, sql: str) -> Script | None:
        script = self.scripts.get(sql)
        if script is not None:
            self.scripts.move_to_end(sql)
        return script

    def put(self, script: Script) -> None:
        self.scripts[script.sql] = script
        self.chars += len(script.sql)
        while self.chars > self.max_chars and len(self.scripts) > 1:
            _, dropped = self.scripts.popitem(last=False)
            self.chars -= len(dropped.sql)


_parsed = _ScriptCache(max_chars=64 * 1024 * 1024)


def parse_script(sql: str) -> Script:
    """``sql`` split and parsed (cached: the steps of one run read the same migrations).

    Raises ``pglast.parser.ParseError`` for SQL PostgreSQL would not parse.
    """
    script = _parsed.get(sql)
    if script is None:
        script = _on_a_deep_stack(_parse_script, sql)
        _parsed.put(script)
    return script


PARSER_STACK_BYTES = 1024**3
"""The stack the parser runs on. pglast builds a statement's tree by recursion in C, one level
per operator of a chain (``1 + 1 + ...``, ``UNION``, ``JOIN``): 8 MiB, a main thread's usual
stack, overflows at about 25,000 levels and the process dies of a segmentation fault, where
1 GiB (address space, used only as deep as a statement goes) holds over two million."""


def _on_a_deep_stack(function: Callable[[str], Script], sql: str) -> Script:
    """``function(sql)`` on the parser's thread, which has :data:`PARSER_STACK_BYTES` of stack;
    what it raises is raised here. The thread is started at the first parse and serves every
    parse after it: one started per parse (a 1 GiB mapping made and unmapped each time) cost
    a deploy of 200 migrations 200 thread starts. Where the system refuses that much address space
    (``ulimit -v``), it runs on the caller's stack, as deep as that holds."""
    parser = _parser_thread()
    if parser is None or threading.get_ident() == _parser_ident:
        # No thread ("can't start new thread": its stack could not be mapped), or on it already.
        return function(sql)
    outcome: list = []
    answered = threading.Lock()
    answered.acquire()
    parser.put((function, sql, outcome, answered))
    answered.acquire()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


_stack_size_lock = threading.Lock()
_requests: queue.SimpleQueue | None = None
"""The parser thread's requests: what to run, and where to put and signal its outcome."""
_parser_ident: int | None = None


def _parser_thread() -> queue.SimpleQueue | None:
    """The requests of the parser's thread, started on first use; None where it cannot start."""
    global _requests
    with _stack_size_lock:
        if _requests is None:
            requests: queue.SimpleQueue = queue.SimpleQueue()
            previous = threading.stack_size(PARSER_STACK_BYTES)
            try:
                threading.Thread(target=_serve, args=(requests,), name="faber-sql-parser", daemon=True).start()
            except RuntimeError:
                return None
            finally:
                threading.stack_size(previous)
            _requests = requests
        return _requests


def _serve(requests: queue.SimpleQueue) -> None:
    global _parser_ident
    _parser_ident = threading.get_ident()
    while True:
        function, sql, outcome, answered = requests.get()
        try:
            outcome.append(function(sql))
        except BaseException as exc:  # handed to the caller's thread, raised there
            outcome.append(exc)
        answered.release()
        del function, sql, outcome, answered  # the script and its tree are the caller's now, not kept here


def _forget_parser_thread() -> None:
    """In a forked child: the parent's parser thread is not there, the first parse starts one."""
    global _requests, _parser_ident
    _requests = _parser_ident = None


os.register_at_fork(after_in_child=_forget_parser_thread)


def _parse_script(sql: str) -> Script:
    try:
        bounds, shapes = _scan(sql)
        nodes = tuple(_parse_one(shape) for shape in shapes.distinct)
    except _Unscannable:
        return _parse_exactly(sql)
    return Script(sql, bounds, shapes.of_statement, nodes)


def _parse_one(shape: str) -> ast.Node:
    import pglast
    from pglast.parser import ParseError

    try:
        parsed = pglast.parse_sql(shape)
    except ParseError:
        raise _Unscannable from None  # the parser on the whole script says where, or splits it better
    if len(parsed) != 1:
        raise _Unscannable
    return parsed[0].stmt


def _parse_exactly(sql: str) -> Script:
    """The parser's own split, each statement parsed: for what the scanner cannot split."""
    import pglast

    bounds: array = array("q")
    nodes = []
    for piece in pglast.split(sql, only_slices=True):
        bounds.extend((piece.start, piece.stop))
        nodes.append(pglast.parse_sql(sql[piece])[0].stmt)
    return Script(sql, bounds, array("l", range(len(nodes))), tuple(nodes))


class _Unscannable(Exception):
    """The scanner cannot split this script on its own; the parser must."""


class _Shapes:
    """Each statement's shape, collected a batch at a time (so memory stays bounded), as an
    index into the distinct shapes."""

    BATCH = 4096

    def __init__(self, sql: str, bounds: array) -> None:
        self.sql = sql
        self.bounds = bounds
        self.parts: list[str] = []
        self.kept: list[str] = []
        self.pending = 0
        self.distinct: dict[str, int] = {}
        self.of_statement: array = array("l")

    def keep(self, token: str) -> None:
        """A token that stays as it is in the shape (numbers inside it are not normalised)."""
        self.parts.append(f"{_KEPT_OPEN}{_letters(len(self.kept))}{_KEPT_CLOSE}")
        self.kept.append(token)

    def end_statement(self) -> None:
        self.parts.append(_STATEMENT_END)
        self.pending += 1
        if self.pending >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        # Plain strings are still whole in statements taken in one step; elsewhere they are ''.
        texts = _NUMBER.sub("0", _PLAIN_STRING.sub("''", "".join(self.parts))).split(_STATEMENT_END)
        texts = texts[: self.pending]
        first = len(self.bounds) // 2 - self.pending
        for number, text in enumerate(texts, start=first):
            if not _DATA_STATEMENT.match(text):
                text = self.sql[self.bounds[2 * number] : self.bounds[2 * number + 1]]
            elif _KEPT_OPEN in text:
                text = _KEPT.sub(lambda m: self.kept[_index(m.group(1))], text)
            self.of_statement.append(self.distinct.setdefault(text, len(self.distinct)))
        self.parts.clear()
        self.kept.clear()
        self.pending = 0


def _scan(sql: str) -> tuple[array, _Shapes]:
    """Statement bounds, and for each statement its shape: the text with comments dropped,
    numbers turned to ``0`` and plain string literals to ``''`` (other literals, quoted names
    and dollar-quoted bodies kept as they are)."""
    if _KEPT_OPEN in sql or _KEPT_CLOSE in sql or _STATEMENT_END in sql:
        raise _Unscannable
    bounds: array = array("q")
    shapes = _Shapes(sql, bounds)
    shape = shapes.parts
    start = -1  # where the current statement's first token is; -1 before it
    code_from = 0  # start of the text not yet added to the shape
    position = 0
    length = len(sql)
    while position < length:
        if start < 0 and code_from == position:
            position = code_from = _simple_statements(sql, position, bounds, shapes)
        restart = False
        for match in _TOKEN.finditer(sql, position):
            at = match.start()
            if at > code_from:
                segment = sql[code_from:at]
                if start < 0 and not segment.isspace():
                    start = code_from + len(segment) - len(segment.lstrip())
                shape.append(segment)
            token = match.group()
            first = token[0]
            if first == ";":
                if start >= 0:
                    bounds.extend((start, _rstrip(sql, start, at)))
                    shapes.end_statement()
                start = -1
                position = code_from = match.end()
                restart = True  # the next statements may be simple ones again
                break
            if first == "-" and token.startswith("--"):
                shape.append(" ")
                code_from = match.end()
                continue
            before = sql[at - 1] if at else " "
            if first == "'" and not _in_name(before) and before != "&":
                if len(token) == 1:  # never closed: the parser reports it
                    raise _Unscannable
                shape.append("''")
            elif first in "'\"" and len(token) > 1 and not (first == "'" and _escape_prefix(sql, at)):
                shapes.keep(token)
            elif first == "$" and _in_name(before):  # a name such as a$b$c: plain code
                code_from = at
                continue
            else:  # E'' string, block comment or dollar quote: the pattern cannot see where it ends
                position = _special_token_end(sql, at, token)
                break
            if start < 0:
                start = at
            code_from = match.end()
        else:
            position = length
            continue
        if restart:
            continue
        if first == "/":
            shape.append(" ")
        else:
            shapes.keep(sql[at:position])
            if start < 0:
                start = at
        code_from = position
    if code_from < length:
        segment = sql[code_from:]
        if start < 0 and not segment.isspace():
            start = code_from + len(segment) - len(segment.lstrip())
        shape.append(segment)
    if start >= 0:
        bounds.extend((start, _rstrip(sql, start, length)))
        shapes.end_statement()
    shapes.flush()
    if len(shapes.of_statement) * 2 != len(bounds):
        raise _Unscannable
    return bounds, shapes


def _simple_statements(sql: str, position: int, bounds: array, shapes: _Shapes) -> int:
    """Take every simple statement (:data:`_SIMPLE_STATEMENT`) from ``position`` on, in one step
    each; return where the first other one begins."""
    match_simple = _SIMPLE_STATEMENT.match
    parts = shapes.parts
    while True:
        match = match_simple(sql, position)
        if match is None:
            return position
        start = match.start(1)
        bounds.extend((start, _rstrip(sql, start, match.end() - 1)))
        parts.append(match.group(1))
        shapes.end_statement()
        position = match.end()


def _in_name(char: str) -> bool:
    return char in _IDENTIFIER_CHARS or char.isalnum()


def _escape_prefix(sql: str, at: int) -> bool:
    """Whether the quote at ``at`` opens an E'' string (an E that is not the end of a name)."""
    return at >= 1 and sql[at - 1] in "Ee" and not (at >= 2 and _in_name(sql[at - 2]))


def _special_token_end(sql: str, at: int, token: str) -> int:
    """Where the E'' string, block comment or dollar quote at ``at`` ends (the end of text if never)."""
    if token == "/*":
        return _block_comment_end(sql, at)
    if token.startswith("$"):
        close = sql.find(token, at + len(token))
        return len(sql) if close == -1 else close + len(token)
    if token.startswith("'"):
        found = _ESCAPE_STRING.match(sql, at)
        if found is not None:
            return found.end()
    raise _Unscannable  # a quote never closed: the parser reports it


def _letters(number: int) -> str:
    """``number`` in base 26 with letters, so the number normalisation cannot touch it."""
    text = ""
    while True:
        number, digit = divmod(number, 26)
        text = chr(97 + digit) + text
        if number == 0:
            return text


def _index(letters: str) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - 97
    return number


def _rstrip(sql: str, start: int, end: int) -> int:
    while end > start and sql[end - 1].isspace():
        end -= 1
    return end


def _block_comment_end(sql: str, start: int) -> int:
    """Where the (nestable) block comment opening at ``start`` ends; the end of text if never."""
    depth = 0
    for mark in _BLOCK_COMMENT_MARK.finditer(sql, start):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            return mark.end()
    return len(sql)


def split_statements(sql: str) -> list[str]:
    """The statements of a script, in order (``DO $$ ... $$`` bodies stay whole)."""
    return list(parse_script(sql).statements())


@functools.cache
def _no_transaction_nodes() -> tuple[type, ...]:
    """Statements PostgreSQL refuses inside a transaction block."""
    from pglast import ast

    return (
        ast.VacuumStmt,
        ast.AlterSystemStmt,
        ast.CreatedbStmt,
        ast.DropdbStmt,
        ast.CreateTableSpaceStmt,
        ast.DropTableSpaceStmt,
    )


def _needs_no_transaction(node: ast.Node) -> bool:
    from pglast import ast

    if isinstance(node, _no_transaction_nodes()):
        return True
    if isinstance(node, (ast.IndexStmt, ast.ReindexStmt)) and getattr(node, "concurrent", False):
        return True
    if isinstance(node, ast.ReindexStmt):
        return any(getattr(p, "defname", None) == "concurrently" for p in node.params or ())
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return True
    if isinstance(node, ast.DiscardStmt):  # DISCARD ALL only: PLANS, SEQUENCES and TEMP run in one
        from pglast.enums import DiscardMode

        return node.target == DiscardMode.DISCARD_ALL
    return isinstance(node, ast.TransactionStmt)


def beyond_its_database(sql: str) -> str | None:
    """The first statement of ``sql`` (its first line) that changes something outside the database
    it runs in: the server's roles, databases, tablespaces or settings, the database's own settings,
    comment, owner or grants (which name it, so a copy of it running them changes the original), or
    another server (a subscription's replication slot). None when no statement does, or when the SQL
    does not parse (what the server would make of it, it says then)."""
    from pglast import ast
    from pglast.enums import ObjectType
    from pglast.parser import ParseError

    try:
        script = parse_script(sql)
    except ParseError:
        return None
    shared = {ObjectType.OBJECT_DATABASE, ObjectType.OBJECT_ROLE, ObjectType.OBJECT_TABLESPACE}
    shared.add(ObjectType.OBJECT_PARAMETER_ACL)  # GRANT SET ON PARAMETER: a server setting
    server_wide = (
        ast.AlterDatabaseStmt,
        ast.AlterDatabaseSetStmt,
        ast.AlterDatabaseRefreshCollStmt,
        ast.CreateRoleStmt,
        ast.AlterRoleStmt,
        ast.AlterRoleSetStmt,
        ast.DropRoleStmt,
        ast.GrantRoleStmt,
        ast.CreateTableSpaceStmt,
        ast.DropTableSpaceStmt,
        ast.AlterTableSpaceOptionsStmt,
        ast.AlterSystemStmt,
        ast.CreatedbStmt,
        ast.DropdbStmt,
        ast.CreateSubscriptionStmt,
        ast.AlterSubscriptionStmt,
        ast.DropSubscriptionStmt,
        ast.ReassignOwnedStmt,
        ast.DropOwnedStmt,
    )
    for index in range(len(script)):
        node = script.node(index)
        if isinstance(node, ast.DoStmt) and _SERVER_WIDE_IN_A_BODY.search(_do_body(node)):
            return script.statement(index).strip().splitlines()[0]
        # COMMENT, SECURITY LABEL and GRANT name their object's kind `objtype`, ALTER ... OWNER
        # `objectType`, ALTER ... RENAME `renameType`.
        kind = next((getattr(node, a) for a in ("objtype", "objectType", "renameType") if hasattr(node, a)), None)
        on_shared = isinstance(
            node, (ast.CommentStmt, ast.SecLabelStmt, ast.AlterOwnerStmt, ast.GrantStmt, ast.RenameStmt)
        )
        if isinstance(node, server_wide) or (on_shared and kind in shared):
            return script.statement(index).strip().splitlines()[0]
    return None


_SERVER_WIDE_IN_A_BODY = re.compile(
    r"\b(?:(?:CREATE|ALTER|DROP)\s+(?:ROLE|USER|GROUP|DATABASE|TABLESPACE|SUBSCRIPTION)\b(?!\s+MAPPING)"
    r"|ALTER\s+SYSTEM\b|(?:REASSIGN|DROP)\s+OWNED\b|COMMENT\s+ON\s+(?:DATABASE|ROLE|TABLESPACE)\b"
    r"|(?:GRANT|REVOKE)\b[^;]*\bON\s+(?:DATABASE|TABLESPACE|PARAMETER)\b|\bdblink(?:_exec)?\s*\()",
    re.I,
)
"""The same statements in a DO block's body, which PostgreSQL's parser leaves as text: seen by
their words (a role created if missing, the usual block), whether or not the block would run them."""


def _do_body(node: ast.DoStmt) -> str:
    return next((str(arg.arg.sval) for arg in node.args or () if arg.defname == "as"), "")


def client_copy(sql: str) -> int | None:
    """The number (from 1) of the script's first ``COPY ... FROM STDIN`` or ``COPY ... TO STDOUT``,
    None without one. Such a COPY exchanges its rows with the client, which a migration's SQL sent
    as statements has none to give or take: the session would wait in the copy. Raises
    ``pglast.parser.ParseError`` for SQL PostgreSQL would not parse."""
    from pglast import ast

    script = parse_script(sql)
    copies = {
        shape
        for shape, node in enumerate(script.nodes)
        if isinstance(node, ast.CopyStmt) and node.filename is None and not node.is_program
    }
    if not copies:
        return None
    return next(index for index in range(len(script)) if script.shapes[index] in copies) + 1


def is_transactional(sql: str) -> bool:
    """Whether the script can run inside one transaction.

    False when it contains a statement PostgreSQL refuses in a transaction block
    (``CREATE INDEX CONCURRENTLY``, ``VACUUM``, ``ALTER SYSTEM``, ``CREATE DATABASE``,
    ``DISCARD ALL``, ...) or
    manages transactions itself (``BEGIN``/``COMMIT``). Raises ``pglast.parser.ParseError`` for
    SQL PostgreSQL would not parse.
    """
    return parse_script(sql).transactional


# The session a migration's SQL runs on ----------------------------------------------------

STRINGS_SETTING = "standard_conforming_strings"
"""Off, a backslash in a plain string literal escapes the next character (``'a\\'`` does not end
there). Everything above reads SQL as PostgreSQL does with it on, its default since 9.1; on a
session where it is off, the server would end a string elsewhere, and could run as statements
(a ``COMMIT``) what faber read as a string. The server reports the setting to the client each time
it changes (``ParameterStatus``), so reading it costs no round trip."""


def reads_strings_as_faber(conn: psycopg.Connection) -> bool:
    """Whether the server reads the session's string literals as faber's parser does."""
    return conn.info.parameter_status(STRINGS_SETTING) != "off"


def keep_strings_read_as_faber(conn: psycopg.Connection) -> None:
    """Before sending SQL faber read: turn the setting on again where an earlier migration turned
    it off on this session (which started with it on: :func:`refuse_nonstandard_strings`). In a
    message of its own: the server reads a whole message before it runs any of it."""
    if not reads_strings_as_faber(conn):
        conn.execute(f"SET {STRINGS_SETTING} = on")


def refuse_nonstandard_strings(conn: psycopg.Connection, database_name: str) -> None:
    """Refuse, before any migration runs on it, a session that reads string literals otherwise
    than faber (:data:`STRINGS_SETTING` off: the database's, its role's or the URL's setting).
    Applying migrations with the setting forced on would change what their backslashes mean."""
    from psycopg import sql

    from faber_core.errors import ConfigError

    if reads_strings_as_faber(conn):
        return
    database = sql.Identifier(database_name).as_string(conn)
    raise ConfigError(
        f"The database {database_name} runs with {STRINGS_SETTING} off: a backslash in a string literal then "
        "escapes the quote after it, and faber, which reads migrations as PostgreSQL does with the setting on, "
        "could take for a string what the server runs as statements (a COMMIT), and could not tell what a "
        "migration ran. Nothing was applied",
        suggestions=[
            f"Turn it on, PostgreSQL's default since 9.1: ALTER DATABASE {database} SET {STRINGS_SETTING} = on "
            f"(and ALTER ROLE <role> RESET {STRINGS_SETTING} where a role sets it, or take it out of the URL)",
            "Before that, look for backslashes in the migrations' string literals: with the setting on a backslash is "
            "an ordinary character; write E'...' where an escape is meant",
        ],
    )
