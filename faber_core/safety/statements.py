"""A migration's statements with where they sit in the file and the acknowledgements above them.

The lint reports findings by line and honours squawk's acknowledgement comments for faber's own
rules too, so both need each statement's lines and the comments just before it::

    -- reviewed: events is rebuilt nightly anyway
    -- squawk-ignore ban-vacuum-full
    VACUUM FULL events;

``-- squawk-ignore-file rule[, rule]`` anywhere in the file acknowledges the rules for every
statement; without rules, every rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast import ast

from faber_core.postgres.sql import parse_script

_LINE_COMMENT = re.compile(r"--[^\n]*")
_IGNORE = re.compile(r"^--\s*squawk-ignore(?P<file>-file)?(?:\s+(?P<rules>.*))?$")
ALL_RULES = "*"


@dataclass(frozen=True)
class Statement:
    node: ast.Node
    text: str
    first_line: int
    """0-based line of the statement's first token (squawk's numbering)."""
    last_line: int
    acknowledged: frozenset[str]
    """Rules acknowledged for this statement, by the comments right before it or file-wide."""

    def acknowledges(self, rule: str) -> bool:
        return rule in self.acknowledged or ALL_RULES in self.acknowledged

    def covers(self, line: int) -> bool:
        return self.first_line <= line <= self.last_line


def located_statements(sql: str) -> list[Statement]:
    """Every statement of ``sql`` in order; raises ``pglast.parser.ParseError`` for bad SQL.

    Linear in the size of ``sql`` (:func:`faber_core.postgres.sql.parse_script`): lines are
    counted once, from one statement to the next. Data statements of one shape share a node.
    """
    file_wide: set[str] = set()
    pieces = []
    previous_end = 0
    line = 0
    script = parse_script(sql)
    for index in range(len(script)):
        start, end = script.bounds[2 * index], script.bounds[2 * index + 1]
        local: set[str] = set()
        for comment in _LINE_COMMENT.findall(sql, previous_end, start):
            match = _IGNORE.match(comment.strip())
            if match:
                (file_wide if match.group("file") else local).update(_rules(match.group("rules")))
        text = sql[start:end]
        line += sql.count("\n", previous_end, start)
        last_line = line + text.count("\n")
        pieces.append((script.node(index), text, line, last_line, local))
        line = last_line
        previous_end = end
    return [
        Statement(node, text, first, last, frozenset(local | file_wide)) for node, text, first, last, local in pieces
    ]


def _rules(text: str | None) -> set[str]:
    names = {name.strip() for name in (text or "").split(",") if name.strip()}
    return names or {ALL_RULES}
