"""Builds Envoy's request-guard Lua filter: envoy/request_guard.lua plus the REST schema
(which paths take which JSON body, and each message's field names) read from the
descriptor set the transcoder uses, so the guard knows exactly what the transcoder does."""

from __future__ import annotations

import re
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

SOURCE = Path(__file__).resolve().parent.parent / "envoy" / "request_guard.lua"

# Well-known types whose JSON form is not an object of their fields: any JSON is left
# to the transcoder (Struct, Value and ListValue are free-form; the rest are scalars).
_FREE_FORM = {
    ".google.protobuf.Struct",
    ".google.protobuf.Value",
    ".google.protobuf.ListValue",
    ".google.protobuf.Any",
    ".google.protobuf.Timestamp",
    ".google.protobuf.Duration",
    ".google.protobuf.FieldMask",
    *(
        f".google.protobuf.{kind}Value"
        for kind in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
    ),
    ".google.protobuf.BytesValue",
}
_RAW_BODY = ".google.api.HttpBody"


def _lua(value: object) -> str:
    """A Lua literal for a str, bool, int, list or dict (keys as ["..."])."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(value))


def _path_pattern(template: str) -> str:
    """A Lua pattern for an HttpRule path template ("/chat/rooms/{room_id}/calls")."""
    template = re.sub(r"\{[^}=]+=\*\*\}|\*\*", "\0ANY\0", template)
    template = re.sub(r"\{[^}]+\}|\*", "\0SEG\0", template)
    pattern = re.sub(r"([^\w/\0])", r"%\1", template)
    return "^" + pattern.replace("\0ANY\0", ".+").replace("\0SEG\0", "[^/]+") + "$"


class _Schema:
    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.types: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in files.file:
            for message in file.message_type:
                self._index(f".{file.package}", message)
        self.messages: dict[str, dict[str, dict[str, object]]] = {}
        self.rules: list[dict[str, str]] = []
        for file in files.file:
            if file.package.startswith("sendsar."):
                for service in file.service:
                    self._add_service(file.package, service)

    def _index(self, scope: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{scope}.{message.name}"
        self.types[name] = message
        for nested in message.nested_type:
            self._index(name, nested)

    def _add_service(self, package: str, service: descriptor_pb2.ServiceDescriptorProto) -> None:
        for method in service.method:
            # The transcoder also accepts every method at its gRPC path with a JSON body.
            self._add_rule("POST", f"/{package}.{service.name}/{method.name}", "*", method)
            rule = method.options.Extensions[annotations_pb2.http]
            for binding in (rule, *rule.additional_bindings):
                verb = binding.WhichOneof("pattern")
                if verb is None:
                    continue
                if verb == "custom":
                    verb, path = binding.custom.kind, binding.custom.path
                else:
                    path = getattr(binding, verb)
                self._add_rule(verb.upper(), path, binding.body, method)

    def _add_rule(
        self, verb: str, path: str, body: str, method: descriptor_pb2.MethodDescriptorProto
    ) -> None:
        if not body or method.input_type == _RAW_BODY:
            return
        message = method.input_type
        if body != "*":
            field = next(f for f in self.types[message].field if f.name == body)
            if field.type != field.TYPE_MESSAGE or field.type_name in _FREE_FORM:
                return
            message = field.type_name
        self.rules.append({"method": verb, "pattern": _path_pattern(path), "body": message})
        self._add_message(message)

    def _add_message(self, name: str) -> None:
        if name in self.messages:
            return
        message = self.types[name]
        fields: dict[str, dict[str, object]] = {}
        self.messages[name] = fields
        for field in message.field:
            entry: dict[str, object] = {"name": field.json_name, "key": field.json_name}
            # Two fields of one (real) oneof are one value set twice.
            if field.HasField("oneof_index") and not field.proto3_optional:
                entry["key"] = "oneof:" + message.oneof_decl[field.oneof_index].name
            value_type = field.type_name if field.type == field.TYPE_MESSAGE else ""
            entry_type = self.types.get(value_type)
            if entry_type is not None and entry_type.options.map_entry:
                entry["map"] = True
                value_type = entry_type.field[1].type_name
            elif field.label == field.LABEL_REPEATED:
                entry["rep"] = True
            if value_type and value_type not in _FREE_FORM:
                entry["msg"] = value_type
                self._add_message(value_type)
            # JSON accepts the lowerCamel name and the proto name for one field.
            fields[field.json_name] = entry
            fields[field.name] = entry


def _schema(descriptors: Path) -> _Schema:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(descriptors.read_bytes())
    return _Schema(files)


def lua_source(descriptors: Path) -> str:
    schema = _schema(descriptors)
    # Literal paths before templated ones, as the transcoder prefers them.
    rules = sorted(schema.rules, key=lambda rule: rule["pattern"].count("[^/]+"))
    messages = ",\n".join(
        f"    [{_lua(name)}] = {_lua(fields)}" for name, fields in sorted(schema.messages.items())
    )
    table = "{\n  rules = {\n"
    table += ",\n".join(f"    {_lua(rule)}" for rule in rules)
    table += "\n  },\n  messages = {\n" + messages + "\n  }\n}"
    return f"local SCHEMA = {table}\n\n{SOURCE.read_text()}"
