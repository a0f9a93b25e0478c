--- luacow.names: the names of luacow's files.
--
-- A client's export name is any bytes; `{export}` in a template (and
-- `luacow.safe_name`) turns it into a form that is safe as a file name and
-- tells different names apart (see `luacow.safe_name` for the rules).  The
-- forms of long names end in a SHA-256 digest, computed here in plain Lua
-- so that policies test the same forms with busted.  The templates that
-- name saves, loads and journals (`luacow.expand`) are parsed and filled
-- here too.  `_show` and `_template` are luacow.lua's, not an API.
-- @module luacow.names

local N = {}

local sformat, sgsub, sfind, tconcat = string.format, string.gsub, string.find, table.concat

-- SHA-256 (FIPS 180-4) on Lua 5.4's 64-bit integers: every 32-bit word
-- is kept masked to 32 bits.  The round constants are the first 32 bits
-- of the fractional parts of the cube roots of the first 64 primes (4.2.2),
-- the initial hash those of the square roots of the first 8 (5.3.3).
local K256 = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
local H256 = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
local M32 = 0xffffffff
local BLOCK = ">" .. string.rep("I4", 16)
local spack, sunpack, srep = string.pack, string.unpack, string.rep

local function rotr (x, n)
  return ((x >> n) | (x << (32 - n))) & M32
end

-- One 64-byte block of msg at pos: updates the state hv in place.
local function sha256_block (hv, w, msg, pos)
  for i = 1, 16 do w[i] = (sunpack(">I4", msg, pos + 4 * (i - 1))) end
  for i = 17, 64 do
    local x, y = w[i - 15], w[i - 2]
    local s0 = rotr(x, 7) ~ rotr(x, 18) ~ (x >> 3)
    local s1 = rotr(y, 17) ~ rotr(y, 19) ~ (y >> 10)
    w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & M32
  end
  local a, b, c, d, e, f, g, h = hv[1], hv[2], hv[3], hv[4], hv[5], hv[6], hv[7], hv[8]
  for i = 1, 64 do
    local s1 = rotr(e, 6) ~ rotr(e, 11) ~ rotr(e, 25)
    local ch = (e & f) ~ (~e & g)
    local t1 = (h + s1 + ch + K256[i] + w[i]) & M32
    local s0 = rotr(a, 2) ~ rotr(a, 13) ~ rotr(a, 22)
    local maj = (a & b) ~ (a & c) ~ (b & c)
    h, g, f, e, d, c, b, a = g, f, e, (d + t1) & M32, c, b, a, (t1 + s0 + maj) & M32
  end
  hv[1], hv[2], hv[3], hv[4] = (hv[1] + a) & M32, (hv[2] + b) & M32, (hv[3] + c) & M32, (hv[4] + d) & M32
  hv[5], hv[6], hv[7], hv[8] = (hv[5] + e) & M32, (hv[6] + f) & M32, (hv[7] + g) & M32, (hv[8] + h) & M32
end

--- The SHA-256 of s (any bytes): 64 lowercase hex digits.
function N.sha256 (s)
  -- Padding (5.1.1): a 1 bit, zeros up to 56 mod 64, the length in bits.
  local zeros = (55 - #s) % 64
  local msg = s .. "\128" .. srep("\0", zeros) .. spack(">I8", #s * 8)
  local hv, w = { table.unpack(H256) }, {}
  for pos = 1, #msg, 64 do sha256_block(hv, w, msg, pos) end
  return sformat(srep("%08x", 8), table.unpack(hv))
end


local SAFE_MAX, SAFE_KEEP = 80, 60

local function escape_byte (c)
  return sformat("%%%02x", c:byte())
end

--- The safe form of s (a string).
function N.safe_name (s)
  if s == "" then return "%" end
  local enc = sgsub(s, "[^a-z0-9_.%-]", escape_byte)
  if enc:byte(1) == 0x2e then enc = "%2e" .. enc:sub(2) end
  if #enc <= SAFE_MAX then return enc end
  -- '%' only starts escapes: one in the last two kept places would be cut.
  local keep = SAFE_KEEP
  if enc:byte(keep) == 0x25 then
    keep = keep - 1
  elseif enc:byte(keep - 1) == 0x25 then
    keep = keep - 2
  end
  return enc:sub(1, keep) .. "%-" .. N.sha256(s):sub(1, 16)
end

---------------------------------------------------------------- messages

-- A short printable rendering of any value, for "got ..." in messages.
local function show (v)
  local t = type(v)
  if t == "string" then
    if #v > 60 then v = v:sub(1, 57) .. "..." end
    return (string.format("%q", v):gsub("\\\n", "\\n"))
  elseif t == "number" or t == "boolean" or t == "nil" then
    return tostring(v)
  end
  return t
end
N._show = show

---------------------------------------------------------------- templates

local safe_form = N.safe_name

local function format_value (v)
  if type(v) == "number" then
    local i = math.tointeger(v)
    if i then return string.format("%d", i) end
    if v == math.floor(v) and v > -1e300 and v < 1e300 then return string.format("%.0f", v) end
    return tostring(v)
  end
  return tostring(v)
end

local function is_time (key)
  return key == "time" or key:sub(1, 5) == "time:"
end

-- Expands one placeholder (the text between braces) from t, called root in
-- messages ("ctx" or "disk").  Returns the text, or nil, an error message
-- and, when a value is missing, the path that is nil.
local DEFAULT_TIME = "%Y%m%d-%H%M%S"
local function placeholder (key, t, root)
  if is_time(key) then
    local fmt = key == "time" and DEFAULT_TIME or key:sub(6)
    if fmt == "" then return nil, "{time:} needs a format, such as {time:%Y%m%d}" end
    local now = t.now
    if now == nil then now = os.time() end
    if type(now) ~= "number" then
      return nil, "{" .. key .. "}: " .. root .. ".now must be a number, got " .. show(now)
    end
    local ok, s = pcall(os.date, fmt, math.floor(now))
    if not ok or type(s) ~= "string" then
      return nil, "{" .. key .. "}: bad time format " .. show(fmt)
        .. (ok and "" or " (" .. (tostring(s):match("invalid conversion specifier '[^']*'") or tostring(s)) .. ")")
    end
    return s
  end
  if key == "export" then
    -- The client's raw name: only its safe form may reach a path.
    local e = t.export
    if e == nil then
      return nil, "{export} has no value (" .. root .. ".export is nil)", root .. ".export"
    elseif type(e) ~= "string" then
      return nil, "{export}: " .. root .. ".export must be a string, got " .. show(e)
    end
    return safe_form(e)
  end
  local cur, path = t, root
  for seg in (key .. "."):gmatch("(.-)%.") do
    if seg == "" or not seg:match("^[%a_][%w_]*$") then
      return nil, "bad placeholder {" .. key
        .. "}: expected {name}, {a.b.c}, {export}, {time} or {time:FORMAT}"
    end
    if cur == nil then
      return nil, "{" .. key .. "} has no value (" .. path .. " is nil)", path
    elseif type(cur) ~= "table" then
      return nil, "{" .. key .. "}: " .. path .. " is a " .. type(cur) .. ", not a table"
    end
    cur, path = cur[seg], path .. "." .. seg
  end
  local ty = type(cur)
  if cur == nil then
    return nil, "{" .. key .. "} has no value (" .. path .. " is nil)", path
  elseif ty ~= "string" and ty ~= "number" and ty ~= "boolean" then
    return nil, "{" .. key .. "}: " .. path .. " is a " .. ty .. ", not a string or number"
  end
  return format_value(cur)
end

-- Splits a template into literal strings and placeholders ({key = "..."}).
-- Returns the list, or nil, an error and what follows " in <template>" in
-- the message.
local function parse_template (template)
  local parts, i, n = {}, 1, #template
  while i <= n do
    local c = template:sub(i, i)
    if c == "{" then
      if template:sub(i + 1, i + 1) == "{" then
        parts[#parts + 1] = "{"
        i = i + 2
      else
        local j = template:find("}", i + 1, true)
        if not j then return nil, ("unclosed '{' at position %d"):format(i), "" end
        parts[#parts + 1] = { key = template:sub(i + 1, j - 1) }
        i = j + 1
      end
    elseif c == "}" then
      if template:sub(i + 1, i + 1) ~= "}" then
        return nil, ("unmatched '}' at position %d"):format(i), " (write }} for a brace)"
      end
      parts[#parts + 1] = "}"
      i = i + 2
    else
      local j = template:find("[{}]", i) or n + 1
      parts[#parts + 1] = template:sub(i, j - 1)
      i = j
    end
  end
  return parts
end

-- Fills parsed parts from t (root as in placeholder).  Returns the text,
-- or nil, the error, the nil path (if a value is missing) and the key.
local function fill_template (parts, t, root)
  local out = {}
  for i, p in ipairs(parts) do
    if type(p) == "string" then
      out[i] = p
    else
      local s, err, missing = placeholder(p.key, t, root)
      if not s then return nil, err, missing, p.key end
      out[i] = s
    end
  end
  return tconcat(out)
end

-- Expands template with t (root as in placeholder).  Returns the text, or
-- nil, an error and what follows " in <template>" in the message.
local function expand_with (template, t, root)
  -- No brace: the template is its text.  Nothing is allocated, so the
  -- default name still works for a policy that filled its memory cap.
  if not sfind(template, "[{}]") then return template end
  local parts, err, tail = parse_template(template)
  if not parts then return nil, err, tail end
  local s, ferr = fill_template(parts, t, root)
  if not s then return nil, ferr, "" end
  return s
end

N._template = { is_time = is_time, parse = parse_template, fill = fill_template,
                expand = expand_with }

return N
