"""Errors as google.rpc.Status with exactly one ErrorInfo (AIP-193)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "calls.sendsar.dev"


class ServiceError(Exception):
    """A failure the caller should see: a status code, a stable reason and a message."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.violations = list(violations)

    def to_status(self) -> grpc.Status:
        details = [
            error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        ]
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in self.violations
                    ]
                )
            )
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        return rpc_status.to_status(
            status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        )


def invalid(field: str, description: str, reason: str = "INVALID_ARGUMENT") -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        f"{field}: {description}",
        violations=[(field, description)],
    )


def unauthenticated(
    message: str = "missing or invalid credentials", reason: str = "UNAUTHENTICATED"
) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def forbidden(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, reason, message)


def not_found(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message)


def conflict(reason: str, message: str) -> ServiceError:
    """The call's state forbids this now (HTTP 409 through Envoy)."""
    return ServiceError(grpc.StatusCode.ABORTED, reason, message)


INTERNAL = ServiceError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
UNAVAILABLE = ServiceError(grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "try again shortly")
