"""Names users choose (experiments, studies, variants) checked once, where they enter the system.

A name ends up in three places that each break on different characters:
- MLflow filter strings (``tags.fer_ablate_name = '...'``): MLflow has no escape character, a value is
  whatever lies between its quotes, so ``it's`` must be put in double quotes and a name holding both
  quote kinds cannot be searched for at all (checked with MLflow 3.x's SQL store);
- file and folder names under ``reports/``: ``/`` and ``\\`` make sub-folders, ``..`` climbs out of
  ``reports/``, and ``: * ? " < > |`` are refused by Windows file systems;
- tags, Optuna study names and YAML keys, which take any text.
So ``safe_name`` refuses exactly what cannot go into a path or a filter, keeps the rest (``'``, ``#``,
spaces inside, non-ASCII letters), and returns the name in Unicode NFC form: macOS stores file names
decomposed, and "é" typed two ways would otherwise be two names in MLflow and one folder on disk.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from fer_ablate.config.errors import ConfigError

MAX_NAME_LENGTH = 120  # file systems allow 255 bytes per name; 120 characters leave room for suffixes in UTF-8
FORBIDDEN = '/\\:*?"<>|'  # path separators and the characters Windows refuses in file names
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_name(name: object, kind: str, where: str | Path | None = None) -> str:
    """``name`` in NFC form when it can be a file name and an MLflow filter value; ConfigError otherwise.

    ``kind`` ("experiment", "study", "variant"...) starts the message, after ``where`` (the file that
    holds the name, when there is one). Refused: empty or non-text names,
    more than ``MAX_NAME_LENGTH`` characters, control characters, any of ``/ \\ : * ? " < > |``, a name
    starting with ``.`` (hidden, or ``..``), leading or trailing spaces, a trailing dot, and Windows device
    names (``CON``, ``NUL``...).
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{prefix}{kind} name must be non-empty text, got {name!r}")
    text = unicodedata.normalize("NFC", name)
    problem = None
    bad = sorted({c for c in text if c in FORBIDDEN})
    if len(text) > MAX_NAME_LENGTH:
        problem = f"is {len(text)} characters long (at most {MAX_NAME_LENGTH})"
    elif any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in text):
        problem = "holds control characters"
    elif bad:
        problem = f"holds {' '.join(bad)} (names become file names and MLflow search values)"
    elif text.startswith("."):
        problem = "starts with '.' (a hidden file, or '..' which climbs out of reports/)"
    elif text != text.strip() or text.endswith("."):
        problem = "starts or ends with a space, or ends with '.' (file systems drop or refuse them)"
    elif text.split(".")[0].upper() in WINDOWS_RESERVED:
        problem = "is a Windows device name"
    if problem:
        raise ConfigError(f"{prefix}{kind} name {name!r} {problem}: "
                          "use letters, digits, spaces, - _ . ' # and the like")
    return text


def quote_filter_value(value: str) -> str:
    """``value`` quoted for an MLflow filter string: ``'it is'``, ``"it's"``; ValueError if it holds both quotes.

    MLflow's search parser has no escape character (a value is the text between its quotes), so the quote
    that the value does not contain is chosen. ``safe_name`` refuses ``"``, so every checked name quotes.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both ' and \": MLflow filter strings cannot express it")


def path_under(root: str | Path, *names: str) -> Path:
    """``root/names...`` after checking that the result stays inside ``root``; ConfigError if it would not.

    A second line of defence for names that did not come through ``safe_name`` (an old MLflow run's tag).
    """
    base = Path(root).resolve()
    target = base.joinpath(*names).resolve()
    if target != base and base not in target.parents:
        raise ConfigError(f"{'/'.join(names)!r} would be written outside {base}")
    return target
