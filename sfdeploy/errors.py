"""Errors a user can fix: every stage raises these; the CLI prints them as one line and exits 2.

Living in the core (not in `sfdeploy.cli`) so that serving, export and training never import the
composition root just to raise an error.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad data, a missing file, a bad option); printed without a traceback."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that carry a user-facing, one-line message."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .models.backbones import BackboneError

    return (UserError, ConfigError, CheckpointError, BackboneError, DataError, FileNotFoundError)
