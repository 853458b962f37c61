"""Error details as the transcoder needs them, and the rendered Envoy configs validate."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

from devstack import envoy, envoy_replies, request_guard
from services.common.errors import DOMAIN, invalid


def test_invalid_argument_carries_one_error_info_and_the_field() -> None:
    status = invalid("calls.maxParticipants", "must be between 2 and 100").to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    decoded = status_pb2.Status()
    decoded.ParseFromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    infos, bad = [], []
    for detail in decoded.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            bad.append(request)
    assert [(i.reason, i.domain) for i in infos] == [("INVALID_ARGUMENT", DOMAIN)]
    assert bad[0].field_violations[0].field == "calls.maxParticipants"


def test_local_and_k8s_envoy_configs_validate(tmp_path: Path) -> None:
    upstreams = envoy.Upstreams(
        ["127.0.0.1:1"], ["127.0.0.1:2"], ["127.0.0.1:3", "127.0.0.1:4"], ["127.0.0.1:5"]
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy.render(upstreams, listen_port=18080, admin_port=19901))
    envoy.validate(config)


def test_k8s_config_is_fresh() -> None:
    """deploy/k8s/generated must match what `make k8s` would render."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        import sys

        argv, sys.argv = sys.argv, ["envoy", "--k8s"]
        try:
            envoy.main()
        finally:
            sys.argv = argv
    committed = (envoy.ROOT / "deploy" / "k8s" / "generated" / "envoy.yaml").read_text()
    assert out.getvalue() == committed


def test_local_replies_never_quote_envoy_text() -> None:
    """Envoy's own reply text (%LOCAL_REPLY_BODY%) can quote the request: never used."""
    upstreams = envoy.Upstreams(["127.0.0.1:1"], ["127.0.0.1:2"], ["127.0.0.1:3"], ["127.0.0.1:5"])
    config = envoy.render(upstreams, listen_port=18080, admin_port=19901)
    assert "%LOCAL_REPLY_BODY%" not in config
    assert "PAYLOAD_TOO_LARGE" in config and "REQUEST_TIMEOUT" in config


def test_request_guard_knows_both_json_names_of_a_field_and_the_rest_paths() -> None:
    source = request_guard.lua_source(envoy.DESCRIPTORS)
    create_session = '[".sendsar.tenant.v1.CreateSessionRequest"] = {'
    line = next(s for s in source.splitlines() if create_session in s)
    assert '["userId"] = {["name"] = "userId", ["key"] = "userId"}' in line
    assert '["user_id"] = {["name"] = "userId", ["key"] = "userId"}' in line
    trie = request_guard._schema(envoy.DESCRIPTORS).trie
    accept = trie
    for segment in ["chat", "rooms", "*", "calls", "*", "accept"]:
        accept = accept["kids"][segment]  # type: ignore[index]
    assert accept["res"] == {"POST": ".sendsar.calls.v1.AcceptCallRequest"}
    # A raw body (HttpBody): LiveKit signs it, so nothing to check.
    webhook = trie["kids"]["livekit"]["kids"]["webhook"]  # type: ignore[index]
    assert webhook["res"] == {"POST": False}


def test_path_templates_split_as_the_transcoder_splits_them() -> None:
    assert request_guard._template("/chat/rooms/{room_id}/calls") == (
        ["chat", "rooms", "*", "calls"],
        "",
    )
    assert request_guard._template("/v1/{name=projects/*/docs/**}:cancel") == (
        ["v1", "projects", "*", "docs", "**"],
        "cancel",
    )
    assert request_guard._template("/v1/sessions") == (["v1", "sessions"], "")


def test_envoys_grpc_replies_carry_one_error_info() -> None:
    """What a gRPC client decodes from Envoy's own replies (grpc-status-details-bin)."""
    for reply in [*envoy_replies.REPLIES.values(), envoy_replies.OTHER_REPLY]:
        status = status_pb2.Status()
        status.ParseFromString(base64.b64decode(reply.status_details_bin()))
        assert (status.code, status.message) == (reply.grpc_code.value[0], reply.message)
        [detail] = status.details
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info)
        assert (info.reason, info.domain) == (reply.reason, DOMAIN)
    limited = envoy_replies.REPLIES[429]
    assert limited.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(limited.metadata) == {"scope": "address"}
    assert envoy_replies.REPLIES[413].grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
