"""Every error bastion raises on purpose, in one tree.

Catch ``BastionError`` to handle all of them; catch a leaf to handle one failure mode::

    BastionError
    ├── ConfigurationError         invalid settings or options; raised at startup; names the var
    ├── MissingDependencyError     an optional extra is not installed (also an ImportError)
    ├── LifespanError              a resource failed to open or close during the app's lifespan
    └── StoreError                 a store operation failed (the backend error is the __cause__)
        ├── StoreUnavailable       the store cannot be reached, or its health gate is open
        │   └── StoreTimeout       the store did not answer in time
        │       └── StoreBusy      no pooled connection came free in time: this process is
        │                          saturated; it says nothing about the store's health
        └── StoreDataError         the store answered, but not with what the operation needs

Backend exceptions (redis, SQLAlchemy, ...) never leave bastion's boundary untranslated: a store
raises ``StoreError(...) from exc`` so callers can apply their degradation policy without importing
the backend.
"""

from __future__ import annotations

__all__ = [
    "BastionError",
    "ConfigurationError",
    "LifespanError",
    "MissingDependencyError",
    "StoreBusy",
    "StoreDataError",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
]


class BastionError(Exception):
    """Base class of every error bastion raises on purpose."""


class ConfigurationError(BastionError, ValueError):
    """Settings or options are invalid.

    The message names the setting (its environment variable, for ``Settings``) and says which
    values are accepted.
    """


class MissingDependencyError(BastionError, ImportError):
    """An optional dependency is needed but not installed.

    Args:
        package: the import name that failed.
        extra: the ``bastion[extra]`` that installs it.
    """

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'bastion[{extra}]'"
        )


class LifespanError(BastionError):
    """A resource failed to open (startup) or close (shutdown)."""


class StoreError(BastionError):
    """A store operation failed. The backend's own exception, if any, is ``__cause__``."""


class StoreUnavailable(StoreError):
    """The store cannot be reached, or its health gate is open after recent failures."""


class StoreTimeout(StoreUnavailable):
    """The store did not answer within its timeout."""


class StoreBusy(StoreTimeout):
    """No connection of this process's pool became free within the pool timeout.

    The operation failed, but the store may be perfectly healthy: the process has more
    operations in flight than connections. The health gate does not count it as an outage, so a
    burst never takes the store offline for everyone else.
    """


class StoreDataError(StoreError):
    """The store answered, but not with data the operation can use (wrong type, bad script)."""
