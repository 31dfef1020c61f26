"""The passwords a migration's SQL writes, found as faber reads the SQL.

A role's password in a migration (``CREATE ROLE app PASSWORD '...'``, MySQL's ``IDENTIFIED BY
'...'``) is in no URL, and what later echoes it need not show the keyword before it: MariaDB's
syntax error quotes a statement from the failing token on (``near 'BY '...''``), a log row holds
just the statement's tail. So each migration's SQL is read here as the server's lexer reads it
(string literals in every quoting of both engines, comments, quoted names) and the literals a
password keyword gives its value are handed to the run's redactor, which then masks them in every
output, whatever surrounds them.

Dynamic SQL is followed: a literal holding SQL (``EXECUTE 'CREATE ROLE a PASSWORD ''...'''``,
MySQL's ``SET @s = '...'; PREPARE``, a ``DO $$ ... $$`` body) is read in turn; when the text of
such a literal ends where the password should start (``'... PASSWORD ' || quote_literal('...')``,
``CONCAT('... BY ''', '...', '''')``) the next literal of the expression is the password, and a
``format('... PASSWORD %L', ...)`` placeholder names its argument.

Only what a password keyword gives is taken: not a user's or host's name (``SET PASSWORD FOR
'app'@'%' = ...``), an authentication plugin's name (``IDENTIFIED WITH 'plugin' BY``) or another
option's value (``VALID UNTIL '...'``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

POSTGRESQL = "postgresql"
MYSQL = "mysql"
"""The dialects, named as the engines are (:attr:`faber_core.engines.Engine.name`)."""
MAX_NESTING = 4
"""How deep literals holding SQL are read (a ``DO`` body's ``EXECUTE '...'`` is two deep)."""
_LOOKAHEAD_TOKENS = 64
"""How far after a literal ending where a password starts its value is looked for."""

# Most migrations never name a password: they are not read token by token.
_MENTIONS = re.compile(r"(?i)password|identified")
_KEYWORDS = r"(?<![\w$])(?i:master_password|source_password|old_password|password|identified|replace)(?![\w$])"
# A literal's opening; its body is read by _Lexer.literal. A prefix must start a word (the quote
# of PASSWORD'...' opens a plain literal).
_PG_STRING = r"(?:(?<![\w$])(?:[eE]|[uU]&|[bBxXnN]))?'"
_PG_DOLLAR = r"(?<![\w$])\$(?:[^\W\d]\w*)?\$"
_MY_STRING = r"""(?:(?<![\w$])(?:[bBxXnN]|_[A-Za-z0-9]+))?['"]"""
# MySQL's "-- " comment needs a blank after the dashes; "/*!80000 ... */" is run, not a comment.
_MY_LINE_COMMENT = r"(?:--(?=\s|\Z)|\#)[^\n]*"
_WORD = r"[^\W\d][\w$]*"
_NO_KEYWORD = r"(?!(?i:password|identified))[pPiI]"
# What the structure pattern skips (see _Lexer): a word is not skipped when a quote follows it (a
# literal's prefix, E'...'); nor a comment that can nest, a dollar quote, a name "password".
_PG_SKIP = (
    rf"""[^-/'"$\w]++|--[^\n]*|-|/(?!\*)|\$(?!(?:[^\W\d]\w*)?\$)"""
    rf"""|(?!{_KEYWORDS})[\w$]++(?!['&])|'(?:[^'pPiI]++|{_NO_KEYWORD}|'')*+'"""
    r'|"(?!(?i:password)")(?:[^"]++|"")*+"'
)
_MY_SKIP = (
    rf"""[^-/'"#`\w$]++|{_MY_LINE_COMMENT}|-|/(?!\*)|/\*(?!M?!)(?:[^*]++|\*(?!/))*+\*/|/\*M?!\d*"""
    rf"""|(?!{_KEYWORDS})[\w$]++(?!['"])|'(?:[^'\\pPiI]++|\\.|{_NO_KEYWORD}|'')*+'"""
    rf"""|"(?:[^"\\pPiI]++|\\.|{_NO_KEYWORD}|"")*+"|`(?:[^`]++|``)*+`"""
)
# PostgreSQL's format() placeholders: %s, %I, %L, with an optional position and width.
_PLACEHOLDER = re.compile(r"%(?:(?P<position>\d+)\$)?-?(?:\d+|\*(?:\d+\$)?)?(?P<type>[sIL%])")
_NAMING_PLUGINS = frozenset(
    ("pam", "auth_pam", "authentication_pam", "gssapi", "authentication_ldap_simple", "authentication_ldap_sasl")
)
"""Authentication plugins whose ``USING|AS '...'`` names a service or an account, not a secret:
learned, it would be masked in all output."""
_PG_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_MY_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%", "_": "\\_"}


@dataclass(frozen=True)
class _Literal:
    raw: str
    """The body as written, between its quotes."""
    value: str
    quote: str
    """``'``, ``"`` or a dollar quote's ``$tag$``."""
    closed: bool
    end: int


class _Token(NamedTuple):
    kind: str
    """``literal``, ``quoted`` (a quoted name), ``word`` or ``other`` (one character)."""
    text: str
    end: int
    literal: _Literal | None = None


class _Wanting(NamedTuple):
    """A text that ends where a password's value starts (``argument`` None), or gives it as the
    ``argument``-th argument after it (a ``format()`` placeholder)."""

    argument: int | None = None


class _Lexer:
    def __init__(self, dialect: str) -> None:
        self.mysql = dialect == MYSQL
        if self.mysql:
            line, string, quoted_name = _MY_LINE_COMMENT, _MY_STRING, "`"
            space = rf"\s+|{line}|/\*M?!\d*|\*/"
            block = r"/\*(?!M?!)"
            dollar = ""
        else:
            line, string, quoted_name = r"--[^\n]*", _PG_STRING, '"'
            space, block, dollar = rf"\s+|{line}", r"/\*", f"|(?P<dollar>{_PG_DOLLAR})"
        # Matched from where the last thing of note ended: what needs no action (blanks, words,
        # numbers, comments and literals that name no password keyword) is skipped within the
        # regular expression engine, which is what keeps a large data migration fast to read.
        self.structure = re.compile(
            f"(?:{_MY_SKIP if self.mysql else _PG_SKIP})*+"
            f"(?:(?P<block>{block})|(?P<keyword>{_KEYWORDS})|(?P<string>{string}){dollar}"
            f"|(?P<quoted>{quoted_name})|(?P<word>{_WORD})|(?P<other>.))",
            re.S,
        )
        # Matched token after token, after a keyword.
        self.token = re.compile(
            f"(?P<space>{space})|(?P<block>{block})|(?P<string>{string}){dollar}"
            f"|(?P<quoted>{quoted_name})|(?P<word>{_WORD})|(?P<other>.)",
            re.S,
        )
        self.name_body = _body(quoted_name, escapes=False)
        # MySQL's '...' and "..." take backslash escapes; PostgreSQL's '...' only as E'...'.
        self.bodies = {quote: _body(quote, escapes=self.mysql) for quote in ("'", '"')}
        self.escaped_bodies = {"'": _body("'", escapes=True)}

    def scan(self, text: str, depth: int, found: set[str]) -> list[_Wanting]:
        """Add to ``found`` every password ``text`` writes; what it leaves wanting at its end
        (or for its ``format()`` arguments), for the text around it to give."""
        wanting: list[_Wanting] = []
        position = 0
        while match := self.structure.match(text, position):
            kind = match.lastgroup
            position = match.end()
            if kind == "block":
                position = self.block_end(text, position)
            elif kind == "quoted":
                name, position = self.quoted(text, position)
                if not self.mysql and name.lower() == "password":  # an option's name: OPTIONS ("password" '...')
                    wanting += self.password_after(text, "password", position, found)
            elif kind == "keyword":
                wanting += self.password_after(text, match["keyword"].lower(), position, found)
            elif kind in ("string", "dollar"):
                literal = self.literal(text, match[kind], position)
                position = literal.end
                if depth < MAX_NESTING and _MENTIONS.search(literal.value):
                    inner: set[str] = set()
                    for want in self.scan(literal.value, depth + 1, inner):
                        self.give(text, literal.end, want, found)
                    found |= inner
                    if not literal.quote.startswith("$"):  # as written in this literal: its quote doubled
                        found |= {form.replace(literal.quote, literal.quote * 2) for form in inner}
        return wanting

    def password_after(self, text: str, keyword: str, position: int, found: set[str]) -> list[_Wanting]:
        """Add to ``found`` the password the ``keyword`` ending at ``position`` gives, if any."""
        tokens = self.significant(text, position)
        token = next(tokens, None)
        if keyword == "identified":
            plugin = None
            if _is_word(token, "with", "via"):  # an authentication plugin, named or quoted
                plugin = next(tokens, None)
                token = next(tokens, None)
            if token is None:
                return [_Wanting()]
            if not _is_word(token, "by", "as", "using"):
                # IDENTIFIED VIA unix_socket has none; a word where BY belongs is one misspelt
                # (IDENTIFIED BYY '...'), which the server's error quotes with the password.
                if plugin is not None or token.kind != "word":
                    return []
            elif plugin is not None and _name(plugin) in _NAMING_PLUGINS:
                return []
            token = next(tokens, None)
        elif keyword != "replace":  # REPLACE 'current password' only: REPLACE INTO, REPLACE(...) are others
            if _is_word(token, "for"):  # SET PASSWORD FOR user@host = ...: the account's name is no password
                for token in islice(tokens, _LOOKAHEAD_TOKENS):
                    if token.text in ("=", ";"):
                        break
                if token is None or token.text != "=":
                    return []
                token = next(tokens, None)
        if keyword != "replace":
            # What may stand before the value, rightly or (a server's syntax error then quoting the
            # password) wrongly: IDENTIFIED BY = '...', BY PASSWORD '...', a charset introducer.
            while token is not None and (
                token.text in ("=", "(")
                or _is_word(token, "password", "old_password")
                or (self.mysql and token.kind == "word" and token.text.startswith("_"))  # _utf8mb4'...'
            ):
                token = next(tokens, None)
        if token is None:
            return [_Wanting()]
        if token.literal is not None:
            return self.take(token, tokens, found)
        if token.text == "%" and not self.mysql:  # format('... PASSWORD %L', ...)
            placeholder = _PLACEHOLDER.match(text, token.end - 1)
            if placeholder is not None and placeholder["type"] in "sL":
                return [_Wanting(_argument(text, placeholder))]
        return []

    def take(self, token: _Token, tokens, found: set[str]) -> list[_Wanting]:
        """Add the literal ``token`` to ``found`` with the literals continuing it ('...' '...')."""
        pieces = []
        while token is not None and token.literal is not None:
            pieces.append(token.literal)
            found |= {token.literal.raw, token.literal.value}
            if not token.literal.closed:
                return [_Wanting()]
            token = next(tokens, None)
        found.add("".join(piece.value for piece in pieces))
        return []

    def give(self, text: str, position: int, want: _Wanting, found: set[str]) -> None:
        """Add to ``found`` the password a literal ending at ``position`` wants from ``text``."""
        tokens = list(islice(self.significant(text, position), _LOOKAHEAD_TOKENS))
        if want.argument is None:
            # The next literal of the expression: through ||, CONCAT(..., ...), quote_literal(...).
            for index, token in enumerate(tokens):
                if token.literal is not None:
                    self.take(token, iter(tokens[index + 1 :]), found)
                    return
                calls = token.kind == "word" and index + 1 < len(tokens) and tokens[index + 1].text == "("
                if not calls and token.text not in ("|", ",", "(", ")", "+"):
                    return
            return
        if not tokens or tokens[0].text != ",":
            return
        argument, depth = 0, 0
        for token in tokens[1:]:
            if token.text == "(":
                depth += 1
            elif token.text == ")":
                if depth == 0:
                    return
                depth -= 1
            elif token.text == "," and depth == 0:
                argument += 1
                if argument > want.argument:
                    return
            elif token.literal is not None and argument == want.argument:
                found |= {token.literal.raw, token.literal.value}

    def significant(self, text: str, position: int):
        """The tokens of ``text`` from ``position`` on, without blanks and comments."""
        while position < len(text):
            match = self.token.match(text, position)
            assert match is not None  # (?P<other>.) matches any character
            kind, position = match.lastgroup, match.end()
            if kind == "space":
                continue
            if kind == "block":
                position = self.block_end(text, position)
            elif kind in ("string", "dollar"):
                literal = self.literal(text, match[0], position)
                position = literal.end
                yield _Token("literal", match[0], position, literal)
            elif kind == "quoted":
                name, position = self.quoted(text, position)
                yield _Token("quoted", name, position)
            else:
                yield _Token(kind, match[0], position)

    def literal(self, text: str, quote: str, start: int) -> _Literal:
        """The literal whose opening ``quote`` (with its prefix) ends at ``start``."""
        if quote.startswith("$"):
            close = text.find(quote, start)
            end = len(text) if close == -1 else close + len(quote)
            raw = text[start:] if close == -1 else text[start:close]
            return _Literal(raw, raw, quote, close != -1, end)
        escapes = self.mysql or quote[0] in "eE"
        quote = quote[-1]
        body = (self.escaped_bodies if escapes and not self.mysql else self.bodies)[quote].match(text, start)
        raw = text[start:] if body is None else text[start : body.end() - 1]
        value = _decoded(raw, quote, _MY_ESCAPES if self.mysql else _PG_ESCAPES if escapes else None)
        return _Literal(raw, value, quote, body is not None, len(text) if body is None else body.end())

    def quoted(self, text: str, start: int) -> tuple[str, int]:
        """A quoted name starting at ``start`` (after its opening quote), and where it ends."""
        match = self.name_body.match(text, start)
        end = len(text) if match is None else match.end()
        return text[start : end - (match is not None)], end

    def block_end(self, text: str, start: int) -> int:
        """Where a block comment opened before ``start`` ends (PostgreSQL's nest, MySQL's do not)."""
        depth = 1
        while depth:
            close = text.find("*/", start)
            if close == -1:
                return len(text)
            opened = -1 if self.mysql else text.find("/*", start, close)
            if opened == -1:
                depth, start = depth - 1, close + 2
            else:
                depth, start = depth + 1, opened + 2
        return start


def _body(quote: str, *, escapes: bool) -> re.Pattern[str]:
    """A literal's body and closing quote; possessive, so that ``'a''`` at the end of a text is
    left open (its ``''`` is a quote inside it) rather than closed early."""
    q = re.escape(quote)
    if escapes:
        return re.compile(rf"(?:[^{q}\\]++|\\.|{q}{q})*+{q}", re.S)
    return re.compile(rf"(?:[^{q}]++|{q}{q})*+{q}")


def _decoded(raw: str, quote: str, escapes: dict[str, str] | None) -> str:
    if escapes is None:
        return raw.replace(quote * 2, quote)
    return re.sub(
        rf"\\(.)|{re.escape(quote)}{{2}}",
        lambda m: quote if m[1] is None else escapes.get(m[1], m[1]),
        raw,
        flags=re.S,
    )


def _name(token: _Token) -> str:
    """A plugin's name as a word, a quoted name or a literal gives it."""
    return (token.literal.value if token.literal is not None else token.text).lower()


def _is_word(token: _Token | None, *words: str) -> bool:
    return token is not None and token.kind == "word" and token.text.lower() in words


def _argument(text: str, placeholder: re.Match[str]) -> int:
    """Which argument after the format string a ``format()`` placeholder takes (from 0): its
    position, else the one after the previous placeholder's."""
    if placeholder["position"]:
        return int(placeholder["position"]) - 1
    taken = -1
    for earlier in _PLACEHOLDER.finditer(text, 0, placeholder.start()):
        if earlier["type"] != "%":
            taken = int(earlier["position"]) - 1 if earlier["position"] else taken + 1
    return taken + 1


def passwords_in_sql(sql: str, dialect: str) -> set[str]:
    """The passwords ``sql`` writes (in the ``dialect`` of :data:`POSTGRESQL`, :data:`MYSQL`),
    each as written between its quotes and as its value; empty ones too."""
    if not _MENTIONS.search(sql):
        return set()
    found: set[str] = set()
    _lexer(dialect).scan(sql, 0, found)
    return found


_lexers: dict[str, _Lexer] = {}


def _lexer(dialect: str) -> _Lexer:
    lexer = _lexers.get(dialect)
    if lexer is None:
        lexer = _lexers[dialect] = _Lexer(dialect)
    return lexer
