"""Errors a user can fix: every stage raises these; the CLI prints them as one line and exits 2.

Living in the core (not in `sfdeploy.cli`) so that serving, export and training never import the
composition root just to raise an error.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A problem the user can fix (bad data, a missing file, a bad option); printed without a traceback."""


# where each user-facing error class is defined (not re-exported names)
_USER_ERROR_CLASSES = (("sfdeploy.config", "ConfigError"), ("sfdeploy.checkpoint", "CheckpointError"),
                       ("sfdeploy.models.backbones", "BackboneError"), ("sfdeploy.data.errors", "DataError"))


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that carry a user-facing, one-line message.

    Only modules already imported are consulted: an exception class can only have been raised once its module was
    imported, and importing them here would pull torch into the slim (ONNX serving) install, where it is absent.
    """
    found = [getattr(sys.modules[mod], name) for mod, name in _USER_ERROR_CLASSES if mod in sys.modules]
    return (UserError, *found, FileNotFoundError)
