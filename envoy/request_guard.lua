-- Refuses ambiguous JSON bodies before the gRPC-JSON transcoder sees them: the
-- transcoder keeps the last of two equal keys, so {"userId":"a","userId":"b"} would
-- be read as "b". It also refuses fields the request message does not have (a
-- misspelt field would otherwise be dropped in silence) and anything that is not
-- strict RFC 8259 JSON.
--
-- devstack/envoy.py prepends `local SCHEMA = {...}` built from the descriptor set:
--   SCHEMA.rules:    {method, pattern (a Lua pattern for the path), body (message name)}
--   SCHEMA.messages: message name -> {[json or proto field name] = field}, where
--                    field = {name (lowerCamel), key (what "set twice" means: the
--                    field, or its oneof), msg (message type or nil), rep, map}
-- A refusal is a 400 whose body the local reply mappers write; when a field is to
-- blame its path goes to dynamic metadata `sendsar.front_door` (field, description),
-- built only from schema names and identifier-like keys, never other request bytes.

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

local function body_message(method, path)
  path = path:match("^[^?]*")
  for _, rule in ipairs(SCHEMA.rules) do
    if rule.method == method and path:match(rule.pattern) then
      return rule.body
    end
  end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local msg = body_message(headers:get(":method"), headers:get(":path"))
  if msg == nil then
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
  elseif err.field ~= nil then
    local metadata = handle:streamInfo():dynamicMetadata()
    metadata:set("sendsar.front_door", "field", err.field)
    metadata:set("sendsar.front_door", "description", err.description)
  end
  handle:respond({[":status"] = "400"}, "")
end
