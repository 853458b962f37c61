"""Which database errors are worth a retry (503 UNAVAILABLE) and which are bugs (500)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout
from sqlalchemy import exc as sa_exc

from services.common.db import unavailable


def _wrapped(orig: psycopg.Error) -> sa_exc.DBAPIError:
    """As SQLAlchemy raises a driver's error: its own class, the original as the cause."""
    try:
        try:
            raise orig
        except Exception as cause:
            raise sa_exc.DBAPIError.instance("SELECT 1", {}, cause, psycopg.Error) from cause
    except sa_exc.DBAPIError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection failed: session is read-only"),
        errors.AdminShutdown("terminating connection due to administrator command"),
        errors.QueryCanceled("canceling statement due to statement timeout"),
        errors.LockNotAvailable("canceling statement due to lock timeout"),
        errors.DeadlockDetected("deadlock detected"),
        PoolTimeout("couldn't get a connection after 5.00 sec"),
    ],
)
def test_a_database_away_or_giving_up_is_retryable(error: psycopg.Error) -> None:
    assert unavailable(error)
    assert unavailable(_wrapped(error))


def test_sqlalchemys_own_pool_timeout_is_retryable() -> None:
    assert unavailable(sa_exc.TimeoutError("QueuePool limit of size 5 overflow 5 reached"))


@pytest.mark.parametrize(
    "error",
    [
        errors.UndefinedTable('relation "calls" does not exist'),
        errors.UniqueViolation("duplicate key value"),
        errors.InvalidTextRepresentation("invalid input syntax"),
    ],
)
def test_a_wrong_statement_is_not(error: psycopg.Error) -> None:
    assert not unavailable(error)
    assert not unavailable(_wrapped(error))


def test_an_unrelated_error_raised_while_handling_one_is_not() -> None:
    """Only the explicit cause chain counts: a bug in an except block stays a bug."""
    try:
        try:
            raise psycopg.OperationalError("connection lost")
        except psycopg.OperationalError:
            raise KeyError("a bug") from None
    except KeyError as bug:
        assert not unavailable(bug)
