"""What every command shares: exit codes and reading the settings."""

from __future__ import annotations

import sys

from bastion.exceptions import ConfigurationError
from bastion.settings import Settings, load_settings

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "settings_or_report"]

EXIT_OK = 0
"""Everything worked."""
EXIT_FAILED = 1
"""A check failed, or the server could not start or stopped with an error."""
EXIT_USAGE = 2
"""Invalid settings or command line: nothing was attempted."""


def settings_or_report() -> Settings | None:
    """Load the settings, or print why they are invalid to stderr and return ``None``."""
    try:
        return load_settings()
    except ConfigurationError as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return None
