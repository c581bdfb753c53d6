"""Secrets out of everything recorded or printed: passwords in storage and tracking URLs become ``***``.

A leaf module (standard library only), so every room and the CLI's last line of defence can use it. One
rule for every URL that reaches an MLflow param, tag or artifact, a log line or an error message:

- the password of the user-info part (``postgresql://fer:PW@host/db`` -> ``postgresql://fer:***@host/db``).
  A password may hold ``/ # ? :`` unencoded (SQLAlchemy, which opens Optuna's and MLflow's databases,
  reads it up to the ``@``), so the user-info part is taken up to the *last* ``@`` of the URL: an
  unencoded ``@`` in a password is hidden too (``url_problem`` names that mistake before any connection);
- the value of every secret query parameter (``?user=fer&password=PW`` -> ``password=***``), and of
  secret ``key=value`` / ``'key': value`` pairs in free text (libpq connection strings, dict reprs);
- every secret once seen (``redact_url``, ``remember``) wherever it appears later in this process's texts,
  e.g. a driver's error message that quotes a fragment of a URL without the URL around it.

Secret keys (case-insensitive, ``-`` read as ``_``): ``SECRET_KEYS`` exactly, or a name ending in one of
``SECRET_SUFFIXES`` (``sslpassword``, ``client_secret``, ``refresh_token``, ``aws_secret_access_key``...).
Over-hiding is preferred to leaking: a query value holding ``@`` after a ``host:port`` may hide the host.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse

MASK = "***"  # SQLAlchemy's and MLflow's own spelling of a hidden password
SECRET_KEYS = frozenset({"password", "passwd", "pwd", "pass", "secret", "token", "key", "apikey", "sig",
                         "signature", "sas", "credential", "credentials", "auth"})
SECRET_SUFFIXES = ("password", "passwd", "secret", "token", "_key", "apikey", "credential", "credentials")
# A secret shorter than this is hidden inside URLs and key=value pairs only: hiding "pw" in every message
# would garble them (and a 3-character password is not worth much anyway).
MIN_REMEMBERED = 4
# Schemes whose URL SQLAlchemy parses (Optuna's RDB storages, MLflow's database stores); an http(s) tracking
# server's client (urllib3) reads user-info up to the last '@', so an '@' in its password is harmless.
DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle", "sqlite", "cockroachdb")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")
_QUERY_PAIR = re.compile(r"(?P<sep>[?&;])(?P<key>[^=&;?#\s]+)=(?P<value>[^&;#\s'\"]*)")
_TEXT_PAIR = re.compile(  # key=value (libpq, shell) or 'key': value (a dict's repr, JSON) in free text
    r"(?P<open>['\"]?)(?P<key>\b[A-Za-z_][\w\-]*)(?P<close>['\"]?)(?P<op>\s*[=:]\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\")}\]]+)")
_remembered: set[str] = set()


def is_secret_key(key: str) -> bool:
    """Whether a query or connection parameter named ``key`` holds a secret (the module's rule)."""
    name = urllib.parse.unquote(key).strip().lower().replace("-", "_")
    return name in SECRET_KEYS or name.endswith(SECRET_SUFFIXES)


def _split_userinfo(rest: str) -> tuple[str, str, str] | None:
    """``(user, password, after)`` of a URL's part after ``scheme://`` when it has ``user:password@``:
    the password runs from the first ``:`` after the user name to the last ``@``; else None."""
    user = re.match(r"[^:/]*", rest).group()
    if not rest[len(user):].startswith(":") or "@" not in rest[len(user) + 1:]:
        return None
    password, _, after = rest[len(user) + 1:].rpartition("@")
    return user, password, after


def secrets_of(url: str) -> list[str]:
    """The secrets a URL holds: the user-info password and secret query values, as written and decoded."""
    found: list[str] = []
    match = _SCHEME.match(url)
    parts = _split_userinfo(url[match.end():]) if match else None
    if parts and parts[1]:
        found.append(parts[1])
    found += [m["value"] for m in _QUERY_PAIR.finditer(url) if is_secret_key(m["key"]) and m["value"]]
    return found + [urllib.parse.unquote(s) for s in found]


def remember(*secrets: str) -> None:
    """Hide these strings (of at least MIN_REMEMBERED characters) in every later ``redact_text`` of this
    process."""
    _remembered.update(s for s in secrets if s and len(s) >= MIN_REMEMBERED)


def redact_url(url: str) -> str:
    """``url`` with its user-info password and secret query values replaced by ``***`` (the module's rule);
    what it hid is remembered (``remember``). A string that is no URL has its secret ``key=value`` pairs
    hidden (``journal:PATH`` and plain paths come back unchanged)."""
    if not url:
        return url
    remember(*secrets_of(url))
    match = _SCHEME.match(url)
    if not match:
        return _redact_pairs(url)
    head, rest = url[:match.end()], url[match.end():]
    parts = _split_userinfo(rest)
    if parts:
        rest = f"{parts[0]}:{MASK}@{parts[2]}"
    return head + _QUERY_PAIR.sub(_hide_query_value, rest)


def _hide_query_value(match: re.Match) -> str:
    if not is_secret_key(match["key"]) or not match["value"]:
        return match.group()
    return f"{match['sep']}{match['key']}={MASK}"


def _redact_pairs(text: str) -> str:
    def hide(match: re.Match) -> str:
        # A bare "key: value" is prose ("unknown key: model.kernal"); only a quoted key before ':' is a pair.
        quoted = match["open"] and match["open"] == match["close"]
        if not is_secret_key(match["key"]) or ("=" not in match["op"] and not quoted):
            return match.group()
        return f"{match['open']}{match['key']}{match['close']}{match['op']}{MASK}"

    return _TEXT_PAIR.sub(hide, text)


def redact_text(text: str) -> str:
    """Free text (an exception's message, a log line, a command line) with every URL passed through
    ``redact_url``, secret ``key=value`` pairs hidden, and every remembered secret replaced by ``***``."""
    if not text:
        return text
    text = _URL.sub(lambda m: redact_url(m.group()), text)
    text = _redact_pairs(text)
    for secret in sorted(_remembered, key=len, reverse=True):  # longest first: a secret may contain another
        text = text.replace(secret, MASK)
    return text


def has_secret(url: str) -> bool:
    """Whether ``url`` holds a password or another secret the module's rule hides."""
    return bool(url) and redact_url(url) != url


def url_problem(url: str) -> str | None:
    """A database URL's password mistake that would otherwise surface as another error, or None.

    An unencoded ``@`` in the password: SQLAlchemy ends the password at the first ``@`` and takes the rest of
    it as the host name, so the connection fails on DNS ("could not translate host name") and the driver's
    message quotes part of the password. Returned as one sentence naming the fix, without the password.
    """
    match = _SCHEME.match(url or "")
    if not match or url.split(":", 1)[0].split("+", 1)[0].lower() not in DATABASE_SCHEMES:
        return None
    rest = url[match.end():]
    user = re.match(r"[^:/]*", rest).group()
    if not rest[len(user):].startswith(":"):
        return None
    host = re.match(r"[^@]*@([^/?#]*)", rest[len(user) + 1:])
    if host and "@" in host.group(1):
        return (f"the password in {redact_url(url)} contains '@', which ends a URL's user-info part: "
                "percent-encode it as %40 (Python: urllib.parse.quote(password, safe=''))")
    return None


ENV_PREFIX = "env:"  # `--storage env:FER_ABLATE_STORAGE`: the URL stays out of command lines and MLflow params


def from_env(value: str | None) -> str | None:
    """``env:NAME`` -> the value of the environment variable NAME (how a URL with a password reaches a command
    without being written in it, e.g. an MLproject parameter, which MLflow records); other values unchanged.

    Raises LookupError with a one-line message naming the variable when it is unset or empty.
    """
    if not value or not value.startswith(ENV_PREFIX):
        return value
    name = value[len(ENV_PREFIX):].strip()
    found = os.environ.get(name, "").strip()
    if not name or not found:
        raise LookupError(f"{value}: the environment variable {name or '(no name)'} is not set (export it with "
                          f"the storage URL, e.g. export {name or 'FER_ABLATE_STORAGE'}=postgresql://user:PASSWORD@host/db)")
    remember(*secrets_of(found))
    return found


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through ``redact_text`` (message, arguments, traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install_logging_filter(logger: logging.Logger | None = None) -> None:
    """Add a RedactingFilter to every handler of ``logger`` (default: the root logger), once each."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
