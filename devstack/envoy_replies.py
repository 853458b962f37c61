"""Envoy's own replies (local replies: a limit, no route, a service down) in the services'
error shape, with a fixed message per reason: Envoy's own text can quote the request's
bytes and internal type names.

REST clients get the JSON body `{code, message, details: [ErrorInfo]}`. gRPC clients
(content-type application/grpc, which the transcoder passes through) get what a gRPC
server would answer: `grpc-status`, `grpc-message` and one ErrorInfo in
`grpc-status-details-bin`, never an HTTP/JSON body.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "calls.sendsar.dev"
MALFORMED = "The request is malformed."

# Dynamic metadata the request guard (envoy/request_guard.lua) sets on a refusal.
GUARD_METADATA = "sendsar.front_door"

# What Envoy counts as gRPC (Grpc::Common::hasGrpcContentType).
GRPC_CONTENT_TYPE = r"^application/grpc(\+.*)?$"

_C = grpc.StatusCode


@dataclass(frozen=True)
class Reply:
    reason: str
    message: str
    json_code: int  # `code` of the JSON body (what REST clients have always read)
    grpc_code: grpc.StatusCode  # what a gRPC server answers for the same failure
    metadata: Mapping[str, str] = field(default_factory=dict)

    def error_info_json(self) -> dict[str, object]:
        info: dict[str, object] = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": self.reason,
            "domain": DOMAIN,
        }
        if self.metadata:
            info["metadata"] = dict(self.metadata)
        return info

    def status_details_bin(self) -> str:
        """grpc-status-details-bin: a google.rpc.Status holding one ErrorInfo."""
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        )
        status = status_pb2.Status(
            code=self.grpc_code.value[0], message=self.message, details=[detail]
        )
        return base64.b64encode(status.SerializeToString()).decode()


_UNAVAILABLE = Reply("UNAVAILABLE", "The service is unavailable; retry later.", 14, _C.UNAVAILABLE)

# HTTP status of a local reply -> the reply. gRPC codes follow what gRPC servers answer:
# an unknown method is UNIMPLEMENTED, a message or metadata over the limit and a rate
# limit are RESOURCE_EXHAUSTED.
REPLIES: dict[int, Reply] = {
    400: Reply("MALFORMED_REQUEST", MALFORMED, 3, _C.INVALID_ARGUMENT),
    404: Reply("NOT_FOUND", "No such resource.", 5, _C.UNIMPLEMENTED),
    408: Reply("REQUEST_TIMEOUT", "The request did not arrive in time.", 4, _C.DEADLINE_EXCEEDED),
    413: Reply(
        "PAYLOAD_TOO_LARGE", "The request body is larger than 1 MiB.", 3, _C.RESOURCE_EXHAUSTED
    ),
    # Only Envoy's per-client-address limit answers 429 itself (the services' own
    # per-tenant and per-credential limits carry their scope in their own ErrorInfo).
    429: Reply(
        "RATE_LIMITED",
        "Too many requests; retry later.",
        8,
        _C.RESOURCE_EXHAUSTED,
        {"scope": "address"},
    ),
    431: Reply("HEADERS_TOO_LARGE", "The request headers are too large.", 3, _C.RESOURCE_EXHAUSTED),
    500: Reply("INTERNAL", "Internal error.", 13, _C.INTERNAL),
    502: _UNAVAILABLE,
    503: _UNAVAILABLE,
    504: Reply("UPSTREAM_TIMEOUT", "The service did not answer in time.", 4, _C.DEADLINE_EXCEEDED),
}
# Any other status Envoy generates.
OTHER_REPLY = Reply("REQUEST_REFUSED", "The request was refused.", 2, _C.UNKNOWN)

_INDENT = " " * 20


def _status_filter(op: str, status: int) -> dict[str, object]:
    value = {"default_value": status, "runtime_key": f"local_reply.{op.lower()}.{status}"}
    return {"status_code_filter": {"comparison": {"op": op, "value": value}}}


# A gRPC client's request: gRPC content type, and not a REST request the transcoder has
# already turned into gRPC (the request guard marks every REST request it sees; Envoy's
# replies to those stay JSON for the REST client).
_GRPC_CLIENT = [
    {
        "header_filter": {
            "header": {
                "name": "content-type",
                "string_match": {"safe_regex": {"regex": GRPC_CONTENT_TYPE}},
            }
        }
    },
    {
        "metadata_filter": {
            "matcher": {
                "filter": GUARD_METADATA,
                "path": [{"key": "rest"}],
                # (the access-log filter ignores `invert`: a value a mark never has)
                "value": {"bool_match": False},
            },
            "match_if_key_not_found": True,
        }
    },
]


def _json_mapper(
    status_filter: Mapping[str, object], body: Mapping[str, object]
) -> dict[str, object]:
    return {"filter": status_filter, "body_format_override": {"json_format": body}}


def _grpc_mapper(status_filter: Mapping[str, object], reply: Reply) -> dict[str, object]:
    headers = {
        "grpc-status": str(reply.grpc_code.value[0]),
        "grpc-status-details-bin": reply.status_details_bin(),
    }
    return {
        "filter": {"and_filter": {"filters": [*_GRPC_CLIENT, status_filter]}},
        "headers_to_add": [
            {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in headers.items()
        ],
        # The body of a local reply to gRPC becomes its grpc-message.
        "body_format_override": {"text_format_source": {"inline_string": reply.message}},
    }


def _guard_mapper() -> dict[str, object]:
    """A refusal by the request guard that names the field to blame (REST only: the
    guard never looks at gRPC)."""
    guard_filter = {
        "metadata_filter": {
            "matcher": {
                "filter": GUARD_METADATA,
                "path": [{"key": "field"}],
                "value": {"present_match": True},
            },
            "match_if_key_not_found": False,
        }
    }
    bad_request = {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [
            {
                "field": f"%DYNAMIC_METADATA({GUARD_METADATA}:field)%",
                "description": f"%DYNAMIC_METADATA({GUARD_METADATA}:description)%",
            }
        ],
    }
    body = {
        "code": 3,
        "message": MALFORMED,
        "details": [REPLIES[400].error_info_json(), bad_request],
    }
    return _json_mapper(guard_filter, body)


def mappers() -> str:
    """The connection manager's local_reply_config mappers, as YAML flow lines (first
    match wins: gRPC before JSON)."""
    replies = [(_status_filter("EQ", s), reply) for s, reply in REPLIES.items()]
    replies.append((_status_filter("GE", 400), OTHER_REPLY))
    out = [_grpc_mapper(f, reply) for f, reply in replies]
    out.append(_guard_mapper())
    for status_filter, reply in replies:
        body = {
            "code": reply.json_code,
            "message": reply.message,
            "details": [reply.error_info_json()],
        }
        out.append(_json_mapper(status_filter, body))
    return "\n".join(f"{_INDENT}- {json.dumps(m)}" for m in out)
