-- Refuses ambiguous JSON bodies before the gRPC-JSON transcoder sees them: the
-- transcoder keeps the last of two equal keys, so {"userId":"a","userId":"b"} would
-- be read as "b". It also refuses fields the request message does not have (a
-- misspelt field would otherwise be dropped in silence) and anything that is not
-- strict RFC 8259 JSON.
--
-- Which body a request carries is decided exactly as the transcoder decides it: the
-- path is split and matched the way its path matcher (grpc-httpjson-transcoding's
-- PathMatcher) does, so every spelling the transcoder accepts for a route (a trailing
-- slash, an empty segment taken by a variable, a percent-encoded variable) is checked
-- as that route. Spellings no client produces and path normalisers disagree on (dot
-- segments, encoded separators or unreserved characters, backslashes, empty segments)
-- are refused outright. gRPC requests (binary protobuf) are not JSON: passed on.
--
-- devstack/envoy.py prepends `local SCHEMA = {...}` built from the descriptor set:
--   SCHEMA.trie:     the HTTP bindings as the path matcher's trie: node = {kids =
--                    {[segment] = node} ("*": one segment, "**": the rest), res =
--                    {[method .. custom verb] = body message name, or false: no JSON}}
--   SCHEMA.verbs:    the custom verbs the bindings use ({[verb] = true})
--   SCHEMA.messages: message name -> {[json or proto field name] = field}, where
--                    field = {name (lowerCamel), key (what "set twice" means: the
--                    field, or its oneof), msg (message type or nil), rep, map}
-- A refusal is a 400 whose body the local reply mappers write; when a field is to
-- blame its path goes to dynamic metadata `sendsar.front_door` (field, description),
-- built only from schema names and identifier-like keys, never other request bytes.
-- Every REST request is marked there too (`rest`), for the local reply mappers.

local MAX_DEPTH = 64

local Refusal = {}

local function refuse(field, description)
  error(setmetatable({field = field, description = description}, Refusal), 0)
end

local function malformed()
  refuse(nil, nil)
end

local function join(path, name)
  if path == nil or name == nil then
    return nil
  end
  if path == "" then
    return name
  end
  return path .. "." .. name
end

-- A key from the request may appear in a field path only if it looks like a name.
local function safe(key)
  if #key <= 64 and key:match("^[A-Za-z_][A-Za-z0-9_]*$") then
    return key
  end
  return nil
end

local Parser = {}
Parser.__index = Parser

local function new_parser(text)
  return setmetatable({text = text, pos = 1}, Parser)
end

function Parser:skip_ws()
  self.pos = self.text:find("[^ \t\r\n]", self.pos) or (#self.text + 1)
end

function Parser:peek()
  return self.text:sub(self.pos, self.pos)
end

function Parser:expect(char)
  self:skip_ws()
  if self:peek() ~= char then
    malformed()
  end
  self.pos = self.pos + 1
end

local function utf8_char(code)
  if code < 0x80 then
    return string.char(code)
  elseif code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  elseif code < 0x10000 then
    return string.char(
      0xE0 + math.floor(code / 0x1000),
      0x80 + math.floor(code / 0x40) % 0x40,
      0x80 + code % 0x40
    )
  end
  return string.char(
    0xF0 + math.floor(code / 0x40000),
    0x80 + math.floor(code / 0x1000) % 0x40,
    0x80 + math.floor(code / 0x40) % 0x40,
    0x80 + code % 0x40
  )
end

local SIMPLE_ESCAPES = {
  ['"'] = '"', ["\\"] = "\\", ["/"] = "/",
  b = "\b", f = "\f", n = "\n", r = "\r", t = "\t",
}

function Parser:hex4()
  local digits = self.text:sub(self.pos, self.pos + 3)
  if not digits:match("^%x%x%x%x$") then
    malformed()
  end
  self.pos = self.pos + 4
  return tonumber(digits, 16)
end

-- Returns the decoded string, so that "user\u0049d" and "userId" compare equal.
function Parser:string()
  self:expect('"')
  local parts = {}
  while true do
    local stop = self.text:find('["\\%z\1-\31]', self.pos)
    if stop == nil then
      malformed()
    end
    parts[#parts + 1] = self.text:sub(self.pos, stop - 1)
    local char = self.text:sub(stop, stop)
    self.pos = stop + 1
    if char == '"' then
      return table.concat(parts)
    elseif char ~= "\\" then
      malformed() -- a raw control character
    end
    local escape = self.text:sub(self.pos, self.pos)
    self.pos = self.pos + 1
    if SIMPLE_ESCAPES[escape] then
      parts[#parts + 1] = SIMPLE_ESCAPES[escape]
    elseif escape == "u" then
      local code = self:hex4()
      if code >= 0xD800 and code < 0xDC00 and self.text:sub(self.pos, self.pos + 1) == "\\u" then
        self.pos = self.pos + 2
        local low = self:hex4()
        if low < 0xDC00 or low >= 0xE000 then
          malformed()
        end
        code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
      elseif code >= 0xD800 and code < 0xE000 then
        malformed() -- a lone surrogate
      end
      parts[#parts + 1] = utf8_char(code)
    else
      malformed()
    end
  end
end

function Parser:digits(at)
  local digits = self.text:match("^%d+", at)
  if digits == nil then
    malformed()
  end
  return digits
end

function Parser:number()
  local at = self.pos
  if self.text:sub(at, at) == "-" then
    at = at + 1
  end
  local whole = self:digits(at)
  if #whole > 1 and whole:sub(1, 1) == "0" then
    malformed()
  end
  at = at + #whole
  if self.text:sub(at, at) == "." then
    at = at + 1 + #self:digits(at + 1)
  end
  local char = self.text:sub(at, at)
  if char == "e" or char == "E" then
    at = at + 1
    char = self.text:sub(at, at)
    if char == "+" or char == "-" then
      at = at + 1
    end
    at = at + #self:digits(at)
  end
  self.pos = at
end

function Parser:scalar()
  local char = self:peek()
  if char == "-" or char:match("%d") then
    return self:number()
  end
  for _, word in ipairs({"true", "false", "null"}) do
    if self.text:sub(self.pos, self.pos + #word - 1) == word then
      self.pos = self.pos + #word
      return
    end
  end
  malformed()
end

-- Parses one value. `msg` is the message type the value must be an object of
-- (nil: free-form JSON, as in google.protobuf.Struct or a scalar field); `path` is
-- the field path so far (nil once it passed a key that cannot be named).
function Parser:value(msg, path, depth)
  if depth > MAX_DEPTH then
    malformed()
  end
  self:skip_ws()
  local char = self:peek()
  if char == "{" then
    self:object(msg, path, depth)
  elseif char == "[" then
    self:array(nil, path, depth)
  elseif char == '"' then
    self:string()
  else
    self:scalar()
  end
end

function Parser:array(field, path, depth)
  self.pos = self.pos + 1
  self:skip_ws()
  if self:peek() == "]" then
    self.pos = self.pos + 1
    return
  end
  while true do
    self:value(field and field.msg, path, depth + 1)
    self:skip_ws()
    local char = self:peek()
    self.pos = self.pos + 1
    if char == "]" then
      return
    elseif char ~= "," then
      malformed()
    end
  end
end

-- A field's value: a repeated message field is an array of objects, a map field
-- an object with free keys whose values are its message type.
function Parser:field_value(field, path, depth)
  self:skip_ws()
  local char = self:peek()
  if field.rep and char == "[" then
    self:array(field, path, depth)
  elseif field.map and char == "{" then
    self:object(nil, path, depth, field.msg)
  else
    self:value(field.msg, path, depth + 1)
  end
end

function Parser:object(msg, path, depth, values_msg)
  local fields = msg and SCHEMA.messages[msg]
  local seen = {}
  self.pos = self.pos + 1
  self:skip_ws()
  if self:peek() == "}" then
    self.pos = self.pos + 1
    return
  end
  while true do
    local key = self:string()
    self:expect(":")
    if fields then
      local field = fields[key]
      if field == nil then
        refuse(join(path, safe(key)), "unknown field")
      end
      local field_path = join(path, field.name)
      if seen[field.key] then
        refuse(field_path, "duplicate field")
      end
      seen[field.key] = true
      self:field_value(field, field_path, depth)
    else
      local key_path = join(path, safe(key))
      if seen[key] then
        refuse(key_path, "duplicate field")
      end
      seen[key] = true
      self:value(values_msg, key_path, depth + 1)
    end
    self:skip_ws()
    local char = self:peek()
    self.pos = self.pos + 1
    if char == "}" then
      return
    elseif char ~= "," then
      malformed()
    end
  end
end

local function check(text, msg)
  local parser = new_parser(text)
  parser:skip_ws()
  if parser.pos > #text then
    return -- no body: the transcoder reads it as an empty message
  end
  if parser:peek() ~= "{" then
    malformed()
  end
  parser:value(msg, "", 0)
  parser:skip_ws()
  if parser.pos <= #text then
    malformed()
  end
end

-- What Envoy treats as gRPC (Grpc::Common::hasGrpcContentType): exactly
-- application/grpc or application/grpc+<codec>; "application/grpc-web" and
-- "application/grpc;..." are not, and the transcoder reads those as JSON.
local function is_grpc(content_type)
  return content_type ~= nil
    and (content_type == "application/grpc" or content_type:sub(1, 17) == "application/grpc+")
end

-- A path no client produces and normalisers read differently: a dot segment, an empty
-- segment before the end, a backslash, a fragment, or a percent-encoded separator or
-- unreserved character (which a careful encoder never escapes).
local function unknown_variant(path)
  if path:find("[\\#]") or path:find("//+[^/]") or path:sub(1, 1) ~= "/" then
    return true
  end
  for segment in path:gmatch("/([^/]*)") do
    if segment == "." or segment == ".." then
      return true
    end
  end
  for hex in path:gmatch("%%(..)") do
    local code = hex:match("^%x%x$") and tonumber(hex, 16)
    if not code then
      return true -- a malformed escape
    end
    local char = string.char(code)
    if char == "/" or char == "\\" or char:match("[%w%-%._~]") then
      return true
    end
  end
  return false
end

-- ExtractRequestParts: the custom verb (only a known one) goes to the method, the
-- path is split on "/", and trailing empty parts (extra slashes) are dropped.
local function request_parts(path, method)
  local colon = path:match("^.*():[^/]*$")
  if colon ~= nil then
    local verb = path:sub(colon + 1)
    if SCHEMA.verbs[verb] then
      method = method .. verb
      path = path:sub(1, colon - 1)
    end
  end
  local parts = {}
  for part in (path:sub(2) .. "/"):gmatch("([^/]*)/") do
    parts[#parts + 1] = part
  end
  while #parts > 0 and parts[#parts] == "" do
    parts[#parts] = nil
  end
  return parts, method
end

local function result_for(node, method)
  local res = node.res
  local found = res[method]
  if found == nil then
    found = res["*"]
  end
  return found
end

-- PathMatcherNode::LookupPath: depth first, a literal child before "*" before "**";
-- a "**" node swallows segments until the rest matches one of its children. Returns
-- the body message name, false (a route without a JSON body) or nil (no route).
local lookup

-- The lookup continued in one child (nil when there is no such child or no route there).
local function descend(node, key, parts, index, method)
  local child = node.kids[key]
  if child == nil then
    return nil
  end
  return lookup(child, parts, index + 1, method)
end

lookup = function(node, parts, index, method)
  while true do
    if index > #parts then
      local found = result_for(node, method)
      if found == nil and node.kids["**"] ~= nil then
        found = result_for(node.kids["**"], method)
      end
      return found
    end
    local found = descend(node, parts[index], parts, index, method)
    if found ~= nil then
      return found
    end
    if not node.wild then
      break
    end
    index = index + 1
  end
  for _, key in ipairs({"*", "**"}) do
    local found = descend(node, key, parts, index, method)
    if found ~= nil then
      return found
    end
  end
  return nil
end

local function body_message(method, path)
  local parts, key = request_parts(path, method)
  return lookup(SCHEMA.trie, parts, 1, key)
end

local function refuse_request(handle, err)
  if err ~= nil and err.field ~= nil then
    local metadata = handle:streamInfo():dynamicMetadata()
    metadata:set("sendsar.front_door", "field", err.field)
    metadata:set("sendsar.front_door", "description", err.description)
  end
  handle:respond({[":status"] = "400"}, "")
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if is_grpc(headers:get("content-type")) then
    return
  end
  -- A REST request: Envoy's own replies to it stay JSON even once the transcoder has
  -- made it gRPC (devstack/envoy_replies.py).
  handle:streamInfo():dynamicMetadata():set("sendsar.front_door", "rest", true)
  local path = (headers:get(":path") or ""):match("^[^?]*")
  if unknown_variant(path) then
    refuse_request(handle, nil)
    return
  end
  local msg = body_message(headers:get(":method"), path)
  if not msg then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local ok, err = pcall(check, body:getBytes(0, body:length()), msg)
  if ok then
    return
  end
  if getmetatable(err) ~= Refusal then
    -- A fault in this script: refuse rather than let an unchecked body through.
    handle:logErr("request guard: " .. tostring(err))
    err = nil
  end
  refuse_request(handle, err)
end
