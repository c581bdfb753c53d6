"""The configuration error, in a module of its own so that rooms which must not load Keras (tracking,
reports) can check names (``config.names``) without importing ``config.settings`` and its model check."""

from __future__ import annotations

from fer_ablate.errors import EXIT_BAD_INPUT, FerAblateError


class ConfigError(FerAblateError, ValueError):
    """A configuration file, variant or override is invalid; the message names the key."""

    exit_code = EXIT_BAD_INPUT
