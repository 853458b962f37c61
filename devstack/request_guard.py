"""Builds Envoy's request-guard Lua filter: envoy/request_guard.lua plus the REST schema
read from the descriptor set the transcoder uses, so the guard knows exactly what the
transcoder does: every HTTP binding as a path trie shaped like the transcoder's path
matcher (grpc-httpjson-transcoding's PathMatcherNode: literal segments, "*" for a
one-segment variable, "**" for the rest of the path, the custom verb appended to the
HTTP method), which binding takes which JSON body, and each message's field names."""

from __future__ import annotations

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


def _template(path: str) -> tuple[list[str], str]:
    """An HttpRule path template as the transcoder's matcher holds it: its segments (a
    variable becomes its pattern's segments, "*" when it has none) and its custom verb.
    "/chat/rooms/{room_id}/calls:sync" -> (["chat", "rooms", "*", "calls"], "sync")."""
    segments: list[str] = []
    verb, depth, current = "", 0, ""
    rest = path[1:] if path.startswith("/") else path
    for index, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if depth == 0 and char == ":" and "/" not in rest[index:]:
            verb = rest[index + 1 :]
            break
        if depth == 0 and char == "/":
            segments.append(current)
            current = ""
        else:
            current += char
    if current or segments:
        segments.append(current)
    out: list[str] = []
    for segment in segments:
        if segment.startswith("{"):
            _, equals, pattern = segment[1:-1].partition("=")
            out.extend(pattern.split("/") if equals else ["*"])
        else:
            out.append(segment)
    return out, verb


def _node() -> dict[str, object]:
    """A trie node: children by segment ("*", "**" or a literal), and the JSON body
    message (False: no body to check) by HTTP method + custom verb."""
    return {"kids": {}, "res": {}}


class _Schema:
    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.types: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in files.file:
            for message in file.message_type:
                self._index(f".{file.package}", message)
        self.messages: dict[str, dict[str, dict[str, object]]] = {}
        self.trie = _node()
        self.verbs: set[str] = set()
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
            # Transcoders before Envoy 1.3x (and auto_mapping) also take JSON at a method's
            # gRPC path: guarded there too, whichever Envoy runs.
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
        segments, custom_verb = _template(path)
        node = self.trie
        for segment in segments:
            kids: dict[str, dict[str, object]] = node["kids"]  # type: ignore[assignment]
            node = kids.setdefault(segment, _node())
            if segment == "**":
                node["wild"] = True
        if custom_verb:
            self.verbs.add(custom_verb)
        results: dict[str, object] = node["res"]  # type: ignore[assignment]
        results[verb + custom_verb] = self._body_message(body, method) or False

    def _body_message(self, body: str, method: descriptor_pb2.MethodDescriptorProto) -> str | None:
        """The message the JSON body is parsed as (None: no JSON body to check)."""
        if not body or method.input_type == _RAW_BODY:
            return None
        message = method.input_type
        if body != "*":
            field = next(f for f in self.types[message].field if f.name == body)
            if field.type != field.TYPE_MESSAGE or field.type_name in _FREE_FORM:
                return None
            message = field.type_name
        self._add_message(message)
        return message

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
    messages = ",\n".join(
        f"    [{_lua(name)}] = {_lua(fields)}" for name, fields in sorted(schema.messages.items())
    )
    table = "{\n  trie = " + _lua(schema.trie) + ",\n"
    table += "  verbs = " + _lua({verb: True for verb in sorted(schema.verbs)}) + ",\n"
    table += "  messages = {\n" + messages + "\n  }\n}"
    return f"local SCHEMA = {table}\n\n{SOURCE.read_text()}"
