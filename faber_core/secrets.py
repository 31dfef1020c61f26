"""Keeping credentials out of every output channel.

A database URL is held as a :class:`Secret`, which never turns into its value by accident
(``str``, ``repr``, f-strings, pydantic dumps and tracebacks all show ``***``). The one
:class:`Redactor` of a run learns each secret before anything parses it, together with every
piece a parser could cut out of it and print (see :func:`secret_forms`), and also masks the
userinfo of any URL and ``password=`` settings, so text that did not come from faber (database
errors, subprocess output, tracebacks) is safe to show once it has passed through ``redact``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from typing import Any
from urllib.parse import quote, unquote

MASK = "***"
# Anchored on the ":/" after a scheme's last character, not on the scheme's first: a pattern
# starting with the scheme tried every letter of a long word and scanned the rest of it from
# there (seconds for 20,000 letters in a line of output). It starts with the ':' itself, whose
# preceding character is checked after it: the regular expression engine then goes from one ':'
# of the text to the next, instead of trying the lookbehind at every character of every text
# faber redacts (its progress lines, its events' names).
_URL_USERINFO = re.compile(r"(?P<scheme>:(?<=[a-zA-Z0-9+.-]:)/+)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]*)@")
# MySQL's "Access denied for user 'app'@'host' (using password: YES)" says whether one was given.
_KEYWORD_PASSWORD = re.compile(
    r"(?i)\b((?:ssl)?password|passwd|pwd)(\s*[=:]\s*)(?!(?:YES|NO)\)(?!\S))('[^']*'|\"[^\"]*\"|\S+)"
)
# A role's password written into a migration's SQL (``CREATE ROLE app PASSWORD '...'``, MySQL's
# ``IDENTIFIED BY '...'``): no URL holds it, so no known form masks it in a preview, the audit log
# or a database error quoting the statement.
# Whatever the literal's quoting: PostgreSQL's '...' (continued on the next line as '...'), E'...',
# U&'...' and $tag$...$tag$, MySQL's "..." and backslash escapes (a PostgreSQL password ending in a
# backslash ends its literal there: read within its line); after comments or nothing at all;
# MySQL's SET PASSWORD [FOR user] = '...', PASSWORD('...'), MASTER_PASSWORD = '...', IDENTIFIED
# VIA|WITH plugin USING|AS '...'; a foreign server's or user mapping's OPTIONS ("password" '...').
# The keyword must not be part of a quoted text or word ('password', password_hash); quoted, it is
# an option's name, followed by its value (JSON's "password": "..." is not SQL). MySQL's syntax
# error quotes the statement from the token it failed at ("near 'BY '...'"), IDENTIFIED cut off.
# In a literal holding SQL (EXECUTE '...'), the password's quotes are doubled.
# This masks the SQL of text faber never read as a migration's (a stored error, another tool's
# log); the passwords of the migrations it reads are learned (Redactor.learn_sql) and masked
# wherever they stand, whatever their spelling.
_SQL_PASSWORD = re.compile(
    r"""(?ix)
    (?=[MSPIN"])  # every other position fails on its first character, at C speed
    (?P<keyword>
        (?<![\w'"$])(?:MASTER_|SOURCE_)?PASSWORD(?:\s+FOR\s+\S+?\s*(?==))?
      | (?<![\w'$])"PASSWORD"
      | (?<![\w'"$])IDENTIFIED(?:\s+|/\*(?s:.*?)\*/)+(?:(?:WITH|VIA)\s+\w+\s+)?(?:BY|AS|USING)
      | (?<!\w)near\ '(?:(?:WITH|VIA)\s+)?(?:\S+\s+)?(?:BY|AS|USING)(?=\s)
    )
    (?P<gap>(?:\s|=|\(|/\*(?s:.*?)\*/|--[^\n]*\n)*)
    (?P<literal>
        (?P<doubled>'')(?=[^'\s;),])(?:[^'\n]|'''')*''
      | (?:
            (?P<prefix>E|U&)?'(?:[^'\\\n]|\\.|'')*'
          | '(?:[^'\n]|'')*'
        )(?:[\ \t]*\n\s*'(?:[^'\n]|'')*')*
      | "(?:[^"\\]|\\.|"")*"
      | \$(?P<tag>(?:[A-Za-z_]\w*)?)\$(?s:.*?)\$(?P=tag)\$
    )"""
)
# A URL's query may carry a password too: libpq reads ``?password=`` (and ``?sslpassword=``, the
# client key's), as do the Node tools that get the URL.
_QUERY_PASSWORD = re.compile(r"(?i)[?&](?:ssl)?password=([^&#]*)")
# V8's JSON.parse quotes the text around a syntax error (``Unexpected token 's', ..."assword":
# s3cret}"... is not valid JSON``): in a project's ORM config or package.json that text is often a
# password, and not the URL's, so no known form masks it. The quoted text (at most 21 characters,
# 10 either side of the error, or the whole input when it is shorter; JSON-escaped in a JSON text,
# the token's quotes escaped in a repr) is masked; the one-character token stays.
_JSON_SYNTAX_CONTEXT = re.compile(
    r"(?P<head>Unexpected token \\?'.{1,12}?', (?:\.\.\.)?)(?P<quote>\\?\")"
    r"(?s:.){0,128}?(?P=quote)(?:\.\.\.)?(?= is not valid JSON)"
)
_SCHEME_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/*")
# Where URL parsers (urllib, libpq) and their error messages cut a password that was not
# percent-encoded: at the userinfo and path delimiters, the query and fragment marks, and '%'.
_PIECE_SEPARATORS = re.compile(r"[@/:%?#&=\s\[\]]+")
_WORD = re.compile(r"\w")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_SECRET_LENGTH = 3
"""Shorter forms are not masked: they would mask ordinary words in every output. A password that
short is never masked, and faber says so once on stderr (:func:`_warn_unmaskable`)."""
MIN_PIECE_LENGTH = 4
"""A piece of a password shorter than this says little about it, and masking it would garble output."""
MIN_CUT_LENGTH = 6
"""The start of a password that what printed it cut off (see :meth:`Redactor._mask_cut_passwords`)
is masked from this length on: shorter, it could be the end of many an ordinary text."""
# Where printed text was cut: the marks servers and faber put there (MySQL's "near '...'" quotes
# 80 characters and then "..."), or the end of a text (PostgreSQL keeps the first 1 kB of a
# session's query).
_CUT_MARKS = re.compile(r"\.\.\.|\u2026|\Z")
PASSWORD_VARIABLES = ("PGPASSWORD", "MYSQL_PWD")
"""Environment variables holding a password the database clients read when the URL has none
(libpq: faber's own connections, pg_dump, psql; the MySQL client programs)."""
MAX_SQL_READ_FOR_PASSWORDS = 1_000_000
"""Migration SQL longer than this (a data migration) is not read for the passwords it writes
(:meth:`Redactor.learn_sql`): read on every command, tens of megabytes of it took seconds to
minutes, and the account statements that write passwords are short."""
REMEMBERED_TEXT_LENGTH = 256
"""Texts up to this long are redacted once and their result remembered: the events of a
deploy repeat the same names, keys and messages for every migration."""
REMEMBERED_TEXTS = 8192
"""At most this many results are remembered; past it, texts are redacted each time again."""


class Secret:
    """A string that only :meth:`reveal` returns."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _passwords(value: str) -> set[str]:
    """Every text that some parser could take for the password of ``value``.

    libpq ends the userinfo at the first ``@``, urllib at the last ``@`` before the first ``/``,
    and a person who did not percent-encode a password meant the last ``@`` of all; so each ``@``
    is taken as a possible end of the userinfo. A ``password=`` or ``sslpassword=`` query
    parameter is a password as well, and a ``key=value`` connection string gives its ``password``
    setting.
    """
    found: set[str] = set()
    prefix = _SCHEME_PREFIX.match(value)
    if prefix is None:
        found.update(match[3].strip("'\"") for match in _KEYWORD_PASSWORD.finditer(value))
        return found
    rest = value[prefix.end() :]
    found.update(match[1] for match in _QUERY_PASSWORD.finditer(rest) if match[1])
    at = rest.find("@")
    while at != -1:
        _user, colon, password = rest[:at].partition(":")
        if colon and password:
            found.add(password)
        at = rest.find("@", at + 1)
    return found


def _printed_forms(text: str) -> set[str]:
    """``text`` as the channels print it: raw, JSON-escaped (ASCII or not), Python's repr, and with
    its backslashes doubled alone (Node's ``util.inspect`` of a text holding both kinds of quote,
    which it quotes with backticks: a driver printing its options)."""
    return {
        text,
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        repr(text)[1:-1],
        text.replace("\\", "\\\\"),
    }


def secret_forms(value: str) -> set[str]:
    """The secret ``value`` and every piece of it an output could carry (:func:`_whole_and_pieces`)."""
    whole, pieces = _whole_and_pieces(value)
    return whole | pieces


def _password_variants(value: str) -> set[str]:
    """Each possible password of ``value`` (:func:`_passwords`) raw, percent-decoded and percent-encoded."""
    variants: set[str] = set()
    for password in _passwords(value):
        decoded = unquote(password)
        variants |= {password, decoded, quote(decoded, safe=""), quote(decoded)}
    return variants


def _whole_and_pieces(value: str) -> tuple[set[str], set[str]]:
    """The forms of ``value`` masked wherever they stand, and the pieces masked where they stand as a whole.

    Whole: the value; each possible password (:func:`_passwords`) raw, percent-decoded and
    percent-encoded. Pieces: those split where parsers cut. Each as raw text, JSON-escaped and
    repr-escaped. Forms shorter than the minimum lengths are left out.
    """
    whole = set(_printed_forms(value)) if value else set()
    pieces: set[str] = set()
    for form in _password_variants(value):
        if len(form) >= MIN_SECRET_LENGTH:
            whole |= _printed_forms(form)
        for piece in _PIECE_SEPARATORS.split(form):
            if len(piece) >= MIN_PIECE_LENGTH:
                pieces |= _printed_forms(piece)
    whole = {form for form in whole if len(form) >= MIN_SECRET_LENGTH}
    return whole, {form for form in pieces if len(form) >= MIN_SECRET_LENGTH} - whole


def _as_a_whole(piece: str) -> re.Pattern[str]:
    """``piece`` where no letter, digit or ``_`` runs on from it (a percent escape may precede it).

    A parser that cut a password prints the piece between the password's delimiters or its own
    quotes; a piece inside a longer word is some other text: the ``2026`` of ``Winter@2026`` in a
    backup id (``backup-20261128-...``), a timestamped migration name or a checksum, which masked
    would name nothing that exists."""
    before = r"(?:(?<!\w)|(?<=%[0-9A-Fa-f]{2}))" if _WORD.match(piece[0]) else ""
    after = r"(?!\w)" if _WORD.match(piece[-1]) else ""
    return re.compile(before + re.escape(piece) + after)


_warned_unmaskable = threading.Event()


def _warn_unmaskable() -> None:
    """Say once per process, on stderr and without the password, that a password too short to
    mask (:data:`MIN_SECRET_LENGTH`) may appear in output."""
    if not _warned_unmaskable.is_set():
        _warned_unmaskable.set()
        sys.stderr.write(
            f"warning: a password or other secret shorter than {MIN_SECRET_LENGTH} characters cannot be masked in "
            "faber's output (masking it would mask ordinary words): use a longer one\n"
        )


def _masked_sql_password(match: re.Match[str]) -> str:
    """The password literal ``match`` found, masked in its own quoting."""
    literal, prefix, tag = match["literal"], match["prefix"] or "", match["tag"]
    if match["doubled"]:
        masked = f"''{MASK}''"
    elif tag is not None:
        masked = f"${tag}${MASK}${tag}$"
    elif literal.startswith('"'):
        masked = f'"{MASK}"'
    else:
        masked = f"{prefix}'{MASK}'"
    return f"{match['keyword']}{match['gap']}{masked}"


class Redactor:
    """Masks every known secret value (in every form :func:`secret_forms` gives) and every URL
    password in text. It knows the passwords of :data:`PASSWORD_VARIABLES` from the start."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pieces: dict[str, re.Pattern[str]] = {}
        """Those of ``_values`` masked only where they stand as a whole, with their pattern (:func:`_as_a_whole`)."""
        self._ordered: list[tuple[str, re.Pattern[str] | None]] = []
        """Every form, longest first, with its pattern when it is one of ``_pieces``."""
        self._found_by: tuple[re.Pattern[str], ...] = ()
        """Patterns that together match every form but those ``_pending``. A fleet's redactor
        knows every target's forms and most text holds none of them: a search or a few instead
        of a substring test per form. Each built once, at the first redact after adds (a pattern
        of every form of a large fleet takes a while to compile)."""
        self._pending: list[str] = []
        self._cut_starts: dict[str, frozenset[str]] = {}
        """The passwords long enough to be cut (:meth:`_mask_cut_passwords`), by their first
        :data:`MIN_CUT_LENGTH` characters."""
        self._longest_password = 0
        self._remembered: dict[str, str] = {}
        """Short texts redacted with the forms known now: replaced by an empty one at every add
        that learns a new form, after the forms are updated (see :meth:`redact`)."""
        # A fleet's targets share one redactor across threads: two adds must not lose a form.
        self._adding = threading.Lock()
        for variable in PASSWORD_VARIABLES:
            self.add(os.environ.get(variable))

    def add(self, value: str | Secret | None) -> None:
        """Remember a secret; call it before anything parses the value, so that a parser's
        error quoting any piece of it is masked too."""
        if value is None:
            return
        text = value.reveal() if isinstance(value, Secret) else value
        if any(0 < len(password) < MIN_SECRET_LENGTH for password in _passwords(text) | {text}):
            _warn_unmaskable()
        whole, pieces = _whole_and_pieces(text)
        # Each password as the channels print it: what a cut text may hold the start of.
        printed = {form for variant in _password_variants(text) for form in _printed_forms(variant)}
        self._learn(whole, pieces, printed)

    def learn_sql(self, sql: str, dialect: str) -> None:
        """Remember the passwords the migration SQL ``sql`` writes
        (:func:`faber_core.sql_passwords.passwords_in_sql`), each masked from now on wherever it
        stands as a whole, not inside a longer word (a password
        ``app`` masked everywhere made ``--applied`` and the names around it unreadable in advice
        and in the saved history); ``dialect``: the engine's name. Call it as the SQL is read,
        before it runs. Those shorter than :data:`MIN_SECRET_LENGTH` are left out, as :meth:`add`
        leaves them, without its warning: the run's own password is not one. SQL longer than
        :data:`MAX_SQL_READ_FOR_PASSWORDS` (a data migration) is not read: the pattern masking
        still applies to it."""
        if len(sql) > MAX_SQL_READ_FOR_PASSWORDS:
            return
        from faber_core.sql_passwords import passwords_in_sql  # only a run that reads migration SQL needs it

        passwords = [password for password in passwords_in_sql(sql, dialect) if len(password) >= MIN_SECRET_LENGTH]
        if passwords:
            printed = {form for password in passwords for form in _printed_forms(password)}
            self._learn(set(), printed, printed)

    def _learn(self, whole: set[str], pieces: set[str], printed: set[str]) -> None:
        """Remember the forms ``whole`` (masked wherever they stand) and ``pieces`` (where they stand
        as a whole), and the passwords ``printed`` as the channels print them (see :meth:`add`)."""
        cuttable = {form for form in printed if len(form) > MIN_CUT_LENGTH}
        with self._adding:
            if cuttable:
                starts = dict(self._cut_starts)
                for form in cuttable:
                    starts[form[:MIN_CUT_LENGTH]] = starts.get(form[:MIN_CUT_LENGTH], frozenset()) | {form}
                self._cut_starts = starts
                self._longest_password = max(self._longest_password, *map(len, cuttable))
                self._remembered = {}
            new = (whole | pieces) - self._values
            # A piece of one secret that is the whole of another is masked wherever it stands.
            known_whole = self._values - self._pieces.keys()
            pieces = {
                piece for piece in self._pieces.keys() | pieces if piece not in whole and piece not in known_whole
            }
            if new or pieces != self._pieces.keys():
                self._values |= new
                self._pieces = {piece: self._pieces.get(piece) or _as_a_whole(piece) for piece in pieces}
                # Longest first, so a piece never leaves the rest of a longer form behind; a new
                # list, so a redact running meanwhile reads a whole one.
                self._ordered = [(form, self._pieces.get(form)) for form in sorted(self._values, key=len, reverse=True)]
                self._pending = [*self._pending, *new]
                self._remembered = {}

    def redact(self, text: str) -> str:
        if not text:
            return text
        # Read before the forms: a result remembered here was redacted with every form known
        # when this dictionary was current (an add replaces it only after updating the forms).
        remembered = self._remembered
        if len(text) > REMEMBERED_TEXT_LENGTH:
            return self._redact(text)
        done = remembered.get(text)
        if done is None:
            done = self._redact(text)
            if len(remembered) < REMEMBERED_TEXTS:
                remembered[text] = done
        return done

    def _redact(self, text: str) -> str:
        ordered = self._ordered
        if self._pending:
            with self._adding:
                if self._pending:
                    pattern = re.compile("|".join(map(re.escape, self._pending)))
                    self._found_by = (*self._found_by, pattern)
                    self._pending = []
        if any(pattern.search(text) for pattern in self._found_by):
            # Longest first, each in turn: a shorter form overlapping a longer one never leaves
            # part of the longer behind (one pass of the pattern would take the leftmost).
            for value, as_a_whole in ordered:
                if value in text:
                    text = text.replace(value, MASK) if as_a_whole is None else as_a_whole.sub(MASK, text)
        text = self._mask_cut_passwords(text)
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        if " is not valid JSON" in text:
            text = _JSON_SYNTAX_CONTEXT.sub(lambda m: f"{m['head']}{m['quote']}{MASK}{m['quote']}", text)
        text = _SQL_PASSWORD.sub(_masked_sql_password, text)
        return _KEYWORD_PASSWORD.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)

    def _mask_cut_passwords(self, text: str) -> str:
        """``text`` with the start of a known password masked where what printed it cut it off:
        just before a cut mark (:data:`_CUT_MARKS`), after a character that cannot be part of a
        word (a quote, ``=``, a space) or, before ``...``, at the start of the text. A database's
        error quoting a statement cut mid-password, or a session's query cut at its length limit,
        holds no whole form of the password for :meth:`_redact` to find."""
        starts = self._cut_starts
        if not starts:
            return text
        cuts: list[tuple[int, int]] = []
        for mark in _CUT_MARKS.finditer(text):
            end = mark.start()
            for start in range(max(0, end - self._longest_password + 1), end - MIN_CUT_LENGTH + 1):
                forms = starts.get(text[start : start + MIN_CUT_LENGTH])
                if not forms or (start > 0 and _WORD.match(text[start - 1])) or (start == 0 and not mark.group()):
                    continue
                if any(form.startswith(text[start:end]) for form in forms):
                    cuts.append((start, end))
                    break
        for start, end in reversed(cuts):
            text = text[:start] + MASK + text[end:]
        return text

    def redact_key(self, key: str) -> str:
        """A key of JSON data, redacted unless it is a name (ASCII letters, digits and ``_``): the
        fields of faber's documents and events, which their readers look up. A password such as
        ``status`` or ``pending`` masked them: the documents lost their shape (``"***": []``) and
        the progress printer failed on every event (exit 1). A key that can hold a credential
        (a URL, ``password=...``, a schema-qualified table name) is no such name."""
        return key if _NAME.fullmatch(key) else self.redact(key)

    def redact_field(self, key: str, value: str) -> str:
        """The text ``value`` of the field ``key``, kept when it is one of that field's fixed words
        (:func:`faber_core.vocabulary.words_by_field`: ``"status": "success"`` with the password
        ``success``), redacted otherwise. A password masks itself in free text still."""
        from faber_core.vocabulary import words_by_field

        return value if value in words_by_field().get(key, ()) else self.redact(value)

    def redact_data(self, value: Any) -> Any:
        """``value`` (JSON data: dicts, lists, scalars) with every text in it redacted, keys too
        (:meth:`redact_key`). Redacting each text rather than the JSON that holds it keeps the JSON
        whole: a password setting such as ``pwd=x`` at the end of a value would otherwise take its
        closing quote. A field's fixed word stays (:meth:`redact_field`)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {
                self.redact_key(str(key)): (
                    self.redact_field(str(key), item) if isinstance(item, str) else self.redact_data(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact_data(item) for item in value]
        return value

    def redact_as_json(self, value: Any) -> Any:
        """``value`` as JSON data, as ``json.loads(json.dumps(value, default=str))`` gives it, with
        every text redacted as :meth:`redact_data` does. Plain data (exactly ``str``, ``int``,
        ``float``, ``bool``, ``None``, lists, tuples and dicts keyed by ``str``, what events carry)
        is converted and redacted in one pass; anything else takes that round trip."""
        kind = type(value)
        if kind is str:
            return self.redact(value)
        if kind is int or kind is float or kind is bool or value is None:
            return value
        if kind is dict and all(type(key) is str for key in value):
            return {
                self.redact_key(key): self.redact_field(key, item) if type(item) is str else self.redact_as_json(item)
                for key, item in value.items()
            }
        if kind is list or kind is tuple:
            return [self.redact_as_json(item) for item in value]
        return self.redact_data(json.loads(json.dumps(value, default=str)))
