"""Every error bastion raises on purpose, in one tree.

Catch ``BastionError`` to handle all of them; catch a leaf to handle one failure mode::

    BastionError
    ├── ConfigurationError         invalid settings or options; raised at startup; names the var
    ├── MissingDependencyError     an optional extra is not installed (also an ImportError)
    ├── LifespanError              a resource failed to open or close during the app's lifespan
    ├── RequestBodyTooLarge        a request body grew past its limit while the app read it (413)
    ├── AuthError                  a request could not be authenticated or authorized
    │   ├── InvalidCredentials     credentials were sent but are wrong, expired or revoked (401)
    │   ├── MissingCredentials     a route needs credentials and none were sent (401)
    │   ├── InsufficientScope      authenticated, but without a scope the route needs (403)
    │   └── AuthUnavailable        credentials cannot be checked now: store or IdP down (503)
    ├── CacheKeyError              a @cached function's argument cannot be part of a cache key
    │                              (also a TypeError); pass key= or exclude= instead
    ├── CacheValueError            a @cached function's result cannot be serialized for storage
    │                              (also a TypeError); pass serializer= instead
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
    "AuthError",
    "AuthUnavailable",
    "BastionError",
    "CacheKeyError",
    "CacheValueError",
    "ConfigurationError",
    "InsufficientScope",
    "InvalidCredentials",
    "LifespanError",
    "MissingCredentials",
    "MissingDependencyError",
    "RequestBodyTooLarge",
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


class RequestBodyTooLarge(BastionError):
    """The request body grew past its size limit while the application was reading it.

    Raised from ``receive`` by the abuse guard's body limit. The guard answers 413 itself when
    the response has not started; catch it only to clean up (a partial upload), not to answer.

    Args:
        limit_bytes: the limit that applies to the request.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(f"the request body exceeds its limit of {limit_bytes} bytes")


class AuthError(BastionError):
    """A request could not be authenticated or authorized.

    Args:
        reason: a short machine-readable cause (``"expired"``, ``"unknown_key"``, ...) for logs,
            events and metrics. It never contains the credential.
        detail: what the client is told; defaults to a generic sentence for the subclass.
    """

    status = 401
    """The HTTP status this failure answers with."""
    error: str | None = "invalid_token"
    """The RFC 6750 ``error`` code for ``WWW-Authenticate`` (``None`` when none applies)."""
    default_detail = "The credentials are invalid."

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail if detail is not None else self.default_detail
        super().__init__(f"{reason}: {self.detail}")


class InvalidCredentials(AuthError):
    """Credentials were presented, and they are malformed, unknown, expired or revoked (401)."""


class MissingCredentials(AuthError):
    """The route requires authentication and the request carries no credentials (401)."""

    error = None
    default_detail = "Authentication is required."


class InsufficientScope(AuthError):
    """The caller is authenticated but lacks a scope the route requires (403).

    Args:
        reason: as for ``AuthError``.
        detail: as for ``AuthError``.
        required: the scopes the route requires.
    """

    status = 403
    error = "insufficient_scope"
    default_detail = "The credentials do not grant the scope this request needs."

    def __init__(
        self, reason: str, detail: str | None = None, *, required: tuple[str, ...] = ()
    ) -> None:
        self.required = required
        super().__init__(reason, detail)


class AuthUnavailable(AuthError):
    """Credentials cannot be checked right now: the key store or the IdP is down (503)."""

    status = 503
    error = None
    default_detail = "Credentials cannot be verified right now; retry shortly."


class CacheKeyError(BastionError, TypeError):
    """An argument of a ``@cached`` function cannot be encoded into a stable cache key.

    The message names the function, the parameter and the type. Give the decorator a ``key=``
    callable, or ``exclude=`` the parameter.
    """


class CacheValueError(BastionError, TypeError):
    """A ``@cached`` function returned a value its serializer cannot store.

    The message names the function and the type. Give the decorator a ``serializer=``, or
    annotate the function's return type so that pydantic can serialize it.
    """


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
