"""Keeping credentials out of every output channel.

A database URL is held as a :class:`Secret`, which never turns into its value by accident
(``str``, ``repr``, f-strings, pydantic dumps and tracebacks all show ``***``). The one
:class:`Redactor` of a run knows every secret value it has seen and also masks the userinfo of
any URL, so text that did not come from faber (database errors, subprocess output) is safe to
show once it has passed through ``redact``.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

MASK = "***"
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]*)@")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)")


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


class Redactor:
    """Masks every known secret value and every URL password in text."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str | Secret | None) -> None:
        """Remember a secret; for a URL, its password (raw and percent-decoded) too."""
        if value is None:
            return
        text = value.reveal() if isinstance(value, Secret) else value
        if not text:
            return
        self._values.add(text)
        try:
            password = urlsplit(text).password
        except ValueError:
            password = None
        if password:
            for form in {password, unquote(password), quote(unquote(password), safe="")}:
                if len(form) >= 3:
                    self._values.add(form)

    def redact(self, text: str) -> str:
        if not text:
            return text
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, MASK)
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        return _KEYWORD_PASSWORD.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)
