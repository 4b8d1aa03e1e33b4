"""The one exception of the user CLI: a user error, printed as one line that names the fix."""

from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """A user error reported as one line."""
