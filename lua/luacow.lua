--- luacow: policy library for the nbdkit luacow filter.
--
-- The filter keeps a copy-on-write overlay over its plugin and saves it as
-- a qcow2 file.  *When* and *where* it saves (and what it reloads, which
-- cluster size it uses, ...) is decided by a policy: a Lua script, run once
-- at startup, that returns a table.  Every field of that table is optional
-- and falls back to `luacow.default`; a field is either a value or a
-- function called with the arguments listed below that returns the value.
--
--    field         when               gets         returns
--    cluster_size  at the 1st client  disk         power of two 512..2097152, or "64K"
--    load          once per export    disk         nil/false, or a path to reload
--                  at its first open               (disk.size is not known yet)
--    journal       once per export    disk         false, or the path of the journal
--                  at its first open               (disk.size is not known yet)
--    events        startup            -            list of "flush", "close", "interval"
--    interval      startup            -            seconds between "interval" events
--    save          "exit" + events    ctx          boolean: save now?
--    name          when saving        ctx          path of the qcow2 to write
--    backing       when saving        ctx          nil, path, or {file=, format=, embed=}
--    compress      when saving        ctx          false, true/"deflate", or "zstd"
--    saved         after a save       ctx, result  ignored
--    cow_on_read   once at startup    disk         false, true, or a path: copy reads
--                                                  into the overlay (while it exists)
--    cow_on_cache  once at startup    disk         boolean: NBD_CMD_CACHE fills the overlay
--
-- `disk` is `{size, cluster_size, params, cwd, script, recovered, export}`;
-- `ctx` is disk's fields plus `{event, dirty_bytes, zero_bytes,
-- written_bytes, data_clusters, zero_clusters, started, now, loaded,
-- last_save}`.  `export` is the client's export name ("" for the default
-- export, whose load and journal are also asked for at startup): raw and
-- untrusted, so paths use `luacow.expand`'s `{export}` (`luacow.safe_name`).
-- Each export has its own overlay, journal and saves.
-- `recovered` is nil unless a journal left by a crash was recovered at
-- startup: then `{journal, blocks, bytes, flushed, seconds}` (flushed: the
-- time of the last durable flush, seconds since the epoch; 0 if none).
-- `load` is not consulted after a recovery: the journal names its base.
--
-- The filter calls `luacow.policy(t)` once on the script's result and
-- `luacow.evaluate(P, field, ...)` whenever it needs a field.  Both raise
-- plain messages (`error(msg, 0)`) that the filter prefixes with the
-- script's name.  Relative paths are returned as they are: the filter
-- resolves them against `disk.cwd`.
--
-- The other functions (`expand`, `safe_name`, `sha256`, `size`, `latest`,
-- `keep`, `log`, `resolve`, `exists`) are helpers for policy scripts.
-- `latest` and `keep` need the small C module `luacow.core`; it is loaded
-- only when they are first called, so everything else works in plain Lua.
-- @module luacow

local M = {}

M._VERSION = "luacow scm"

--- The valid policy field names, in documentation order.
M.FIELDS = { "cluster_size", "load", "journal", "events", "interval", "save", "name",
             "backing", "compress", "saved", "cow_on_read", "cow_on_cache" }

--- The events a policy may ask for besides "exit" (which is always on).
M.EVENTS = { "flush", "close", "interval" }

local IS_FIELD, IS_EVENT = {}, {}
for _, f in ipairs(M.FIELDS) do IS_FIELD[f] = true end
for _, e in ipairs(M.EVENTS) do IS_EVENT[e] = true end

local MIN_CLUSTER, MAX_CLUSTER = 512, 2097152

---------------------------------------------------------------- helpers

local show = require("luacow.names")._show
-- Policy errors: no position, the filter prefixes the script name.
local function fail (msg)
  error(msg, 0)
end

-- A path-like result: a non-empty string without NUL bytes (the file
-- system would cut it at the first one).  Returns nil or the reason.
local function bad_path (v)
  if type(v) ~= "string" or v == "" then return "" end
  if v:find("\0", 1, true) then return " without NUL bytes" end
  return nil
end

local function levenshtein (a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function contains (list, x)
  for _, v in ipairs(list) do
    if v == x then return true end
  end
  return false
end

-- Parses a byte count: a non-negative integer, or a string of digits with
-- an optional K, M, G or T suffix (powers of 1024, case-insensitive).
-- Returns the integer, or nil.
local SHIFT = { [""] = 0, k = 10, m = 20, g = 30, t = 40 }
local function parse_size (v)
  if type(v) == "number" then
    local n = math.tointeger(v)
    if n and n >= 0 then return n end
    return nil
  elseif type(v) == "string" then
    local digits, suffix = v:match("^%s*(%d+)%s*([KkMmGgTt]?)%s*$")
    if not digits then return nil end
    local n = math.tointeger(tonumber(digits))
    local shift = SHIFT[suffix:lower()]
    if not n or n > (math.maxinteger >> shift) then return nil end
    return n << shift
  end
  return nil
end

---------------------------------------------------------------- validators
-- One per field: takes the raw value (a static value or what the field's
-- function returned) and returns the normalized value, or raises
-- "<field> must be ..., got ...".

local check = {}

function check.cluster_size (v)
  local n = parse_size(v)
  if n and n >= MIN_CLUSTER and n <= MAX_CLUSTER and n & (n - 1) == 0 then
    return n
  end
  fail(("cluster_size must be a power of two from %d to %d, got %s")
       :format(MIN_CLUSTER, MAX_CLUSTER, show(v)))
end

function check.load (v)
  if v == nil or v == false then return nil end
  local why = bad_path(v)
  if not why then return v end
  fail("load must be nil, false or a path (non-empty string" .. why .. "), got " .. show(v))
end

function check.journal (v)
  if v == nil or v == false then return false end
  if type(v) == "string" and v ~= "" then return v end
  fail("journal must be false or a path (non-empty string), got " .. show(v))
end

local EVENTS_MUST = 'events must be a list of "flush", "close" and "interval", got '

function check.events (v)
  if v == nil then return {} end
  if type(v) ~= "table" then fail(EVENTS_MUST .. show(v)) end
  local n = #v
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      fail(EVENTS_MUST .. "a table with key " .. show(k))
    end
  end
  local out, seen = {}, {}
  for i = 1, n do
    local e = v[i]
    if not IS_EVENT[e] then
      local why = e == "exit" and ' ("exit" is always an event)' or ""
      fail(EVENTS_MUST .. show(e) .. " at index " .. i .. why)
    end
    if not seen[e] then
      seen[e] = true
      out[#out + 1] = e
    end
  end
  return out
end

function check.interval (v)
  if v == nil or v == false then return nil end
  if type(v) == "number" and v > 0 and v < math.huge then return v end
  fail("interval must be nil or a number of seconds > 0, got " .. show(v))
end

function check.save (v)
  if v == nil then return false end
  if type(v) == "boolean" then return v end
  fail("save must be a boolean (nil means false), got " .. show(v))
end

function check.name (v)
  if v == nil or v == false then return nil end
  local why = bad_path(v)
  if not why then return v end
  fail("name must be nil or a path (non-empty string" .. why .. "), got " .. show(v))
end

local BACKING_KEYS = { file = true, format = true, embed = true }

function check.backing (v)
  if v == nil or v == false then return nil end
  if type(v) == "string" and not bad_path(v) then
    return { file = v, format = "raw", embed = false }
  end
  if type(v) ~= "table" then
    fail("backing must be nil, a path or {file=, format=, embed=}, got " .. show(v))
  end
  local keys = {}
  for k in pairs(v) do
    if not BACKING_KEYS[k] then keys[#keys + 1] = show(k) end
  end
  if #keys > 0 then
    table.sort(keys)
    fail("backing must be {file=, format=, embed=}, got unknown key " .. table.concat(keys, ", "))
  end
  local file, format, embed = v.file, v.format, v.embed
  local why = bad_path(file)
  if why then
    fail("backing.file must be a path (non-empty string" .. why .. "), got " .. show(file))
  end
  if format == nil then
    format = "raw"
  elseif bad_path(format) then
    fail('backing.format must be a non-empty string such as "raw" or "qcow2", got ' .. show(format))
  end
  if embed == nil then
    embed = false
  elseif type(embed) ~= "boolean" then
    fail("backing.embed must be a boolean, got " .. show(embed))
  end
  return { file = file, format = format, embed = embed }
end

function check.compress (v)
  if v == nil or v == false then return false end
  if v == true then return "deflate" end
  if v == "deflate" or v == "zstd" then return v end
  fail('compress must be false, true, "deflate" or "zstd", got ' .. show(v))
end

function check.saved (v)
  if v == nil or type(v) == "function" then return nil end
  fail("saved must be nil or a function, got " .. show(v))
end

function check.cow_on_read (v)
  if v == nil or v == false then return false end
  if v == true or (type(v) == "string" and v ~= "") then return v end
  fail("cow_on_read must be false, true or a path (non-empty string), got " .. show(v))
end

function check.cow_on_cache (v)
  if v == nil then return false end
  if type(v) == "boolean" then return v end
  fail("cow_on_cache must be a boolean, got " .. show(v))
end

---------------------------------------------------------------- library

--- Resolves `path` against the directory `dir`.
-- Absolute paths, and any path when `dir` is nil, are returned unchanged.
-- Policies use it with `disk.cwd` before touching files themselves (the
-- filter may run from another directory than the one nbdkit started in).
-- @tparam string path
-- @tparam[opt] string dir
-- @treturn string
function M.resolve (path, dir)
  if type(path) ~= "string" or path == "" then
    error("luacow.resolve: path must be a non-empty string, got " .. show(path), 2)
  end
  if dir ~= nil and type(dir) ~= "string" then
    error("luacow.resolve: dir must be nil or a string, got " .. show(dir), 2)
  end
  if dir == nil or dir == "" or path:sub(1, 1) == "/" then return path end
  return (dir:gsub("/+$", "")) .. "/" .. path
end

--- Whether `path` names an existing, readable file.
-- @tparam string path
-- @treturn boolean
function M.exists (path)
  if type(path) ~= "string" or path == "" then
    error("luacow.exists: path must be a non-empty string, got " .. show(path), 2)
  end
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- Converts a byte count to an integer.
-- Integers (and integral floats) >= 0 pass through; strings are digits with
-- an optional, case-insensitive K, M, G or T suffix (powers of 1024).
-- @usage luacow.size("64K") --> 65536
-- @tparam number|string v
-- @treturn integer
-- @raise on anything else
function M.size (v)
  local n = parse_size(v)
  if n then return n end
  error('luacow.size: expected a byte count such as 65536, "64K" or "1M", got ' .. show(v), 2)
end

-- One value for describe.  No metamethod is called, and the functions
-- used are taken now: a policy that replaces string.format or next still
-- gets its values traced.
local sformat, sgsub, mtype, tconcat, rawnext, rawtype = string.format, string.gsub,
  math.type, table.concat, next, type
local function describe_value (v)
  local t = rawtype(v)
  if t == "string" then
    return (sgsub(sformat("%q", v), "\\\n", "\\n"))
  elseif t == "number" then
    return mtype(v) == "integer" and sformat("%d", v) or sformat("%.14g", v)
  elseif t == "boolean" then
    return v and "true" or "false"
  end
  return t
end

--- A one-line rendering of a value, for the filter's `-D luacow.lua=1`
-- trace: strings quoted, tables one level deep (`{file="a", embed=true}`,
-- at most 8 entries), other values by type.  Never calls a metamethod.
-- @param v any value
-- @treturn string
function M.describe (v)
  if rawtype(v) ~= "table" then return describe_value(v) end
  local parts, n, k, x = {}, 0, rawnext(v)
  while k ~= nil do
    n = n + 1
    if n > 8 then parts[n] = "..." break end
    local key = rawtype(k) == "string" and k .. "=" or ""
    parts[n] = key .. (rawtype(x) == "table" and "{...}" or describe_value(x))
    k, x = rawnext(v, k)
  end
  return "{" .. tconcat(parts, ", ") .. "}"
end

---------------------------------------------------------------- names

local names = require "luacow.names"
local sha256, safe_form = names.sha256, names.safe_name
local is_time, parse_template = names._template.is_time, names._template.parse
local fill_template, expand_with = names._template.fill, names._template.expand

--- The SHA-256 digest of a string (FIPS 180-4), in pure Lua.
-- @usage luacow.sha256("abc") --> "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
-- @tparam string s any bytes
-- @treturn string 64 lowercase hex digits
-- @raise when s is not a string
function M.sha256 (s)
  if type(s) ~= "string" then
    error("luacow.sha256: expected a string, got " .. show(s), 2)
  end
  return sha256(s)
end

--- A file-name-safe form of an untrusted name, such as a client's export name.
--
-- Bytes `a-z`, `0-9`, `_`, `-` and `.` stay as they are, except a `.` as
-- the first character; every other byte (uppercase letters too) becomes
-- `%` and two lowercase hex digits.  The empty name becomes `%`.  A form
-- longer than 80 characters is cut to its first 60 or fewer (never inside
-- a `%xx`) followed by `%-` and 16 hex digits: the first 8 bytes of the
-- SHA-256 of the raw name.
--
-- So the result has only the characters `[a-z0-9._%-]` (never `/`), never
-- starts with `.`, is never empty, and has at most 80 characters.  Two
-- different names give different forms: exactly for short forms, through
-- 64 bits of SHA-256 for long ones (`%-` occurs in no short form).  With no
-- uppercase letter in any form, names that differ only in case or in
-- Unicode normalization stay apart on case-insensitive or normalizing file
-- systems too.
-- @usage luacow.safe_name("../etc/Disk 1") --> "%2e.%2fetc%2f%44isk%201"
-- @tparam string s the raw name
-- @treturn string
-- @raise when s is not a string
function M.safe_name (s)
  if type(s) ~= "string" then
    error("luacow.safe_name: name must be a string, got " .. show(s), 2)
  end
  return safe_form(s)
end

--- Fills a template such as `"{params.name}-{time:%Y%m%d-%H%M%S}-{event}.qcow2"`.
--
-- * `{a.b.c}` is `ctx.a.b.c`, as it is; numbers print as integers when
--   integral.
-- * `{export}` is `luacow.safe_name(ctx.export)`: the export name made
--   safe for a file name.  It is the only placeholder that is escaped:
--   `ctx.export` itself is the client's raw, untrusted name and must never
--   be used in a path unescaped.
-- * `{time:FMT}` is `os.date(FMT, ctx.now or os.time())`; `{time}` is
--   `{time:%Y%m%d-%H%M%S}`.  Use `{time:!FMT}` for UTC.
-- * `{{` and `}}` stand for literal braces.
--
-- A placeholder without a value is an error naming it.
-- @tparam string template
-- @tparam[opt] table ctx
-- @treturn string
function M.expand (template, ctx)
  if type(template) ~= "string" then
    error("luacow.expand: template must be a string, got " .. show(template), 2)
  end
  if ctx == nil then
    ctx = {}
  elseif type(ctx) ~= "table" then
    error("luacow.expand: ctx must be a table, got " .. show(ctx), 2)
  end
  local s, err, tail = expand_with(template, ctx, "ctx")
  if not s then error("luacow.expand: " .. err .. " in " .. show(template) .. tail, 2) end
  return s
end

local function load_core (fname)
  local ok, core = pcall(require, "luacow.core")
  if not ok then
    error("luacow." .. fname .. " needs the C module luacow.core, which failed to load: "
          .. tostring(core), 3)
  end
  return core
end

-- The regular files matching pattern, newest first (ties: greater name first).
local function matching (fname, pattern)
  if type(pattern) ~= "string" or pattern == "" then
    error("luacow." .. fname .. ": pattern must be a non-empty string, got " .. show(pattern), 3)
  end
  local core = load_core(fname)
  local paths, err = core.glob(pattern)
  if not paths then error("luacow." .. fname .. ": " .. tostring(err), 3) end
  local files = {}
  for _, p in ipairs(paths) do
    local t, kind = core.mtime(p)
    if t and (kind == nil or kind == "file") then
      files[#files + 1] = { path = p, mtime = t }
    end
  end
  table.sort(files, function (a, b)
    if a.mtime ~= b.mtime then return a.mtime > b.mtime end
    return a.path > b.path
  end)
  return files
end

--- The newest regular file matching a glob(3) pattern, or nil.
-- Newest by modification time; equal times are broken by name (the
-- greater name wins, so timestamped names sort as expected).  Directories
-- and other non-files are ignored.
-- @tparam string pattern e.g. `"/var/lib/vm/overlay-*.qcow2"`
-- @treturn string|nil
function M.latest (pattern)
  local files = matching("latest", pattern)
  return files[1] and files[1].path or nil
end

--- Deletes all but the newest `n` regular files matching a glob pattern.
-- Order as in `luacow.latest`.
-- @tparam string pattern
-- @tparam integer n how many to keep (>= 0)
-- @treturn {string,...} the deleted paths, newest first
-- @raise when a file cannot be removed (files before it are already gone)
function M.keep (pattern, n)
  local k = type(n) == "number" and math.tointeger(n) or nil
  if not k or k < 0 then
    error("luacow.keep: n must be an integer >= 0, got " .. show(n), 2)
  end
  local files = matching("keep", pattern)
  local deleted = {}
  for i = k + 1, #files do
    local p = files[i].path
    local ok, err = os.remove(p)
    if not ok then error("luacow.keep: cannot remove " .. err, 2) end
    deleted[#deleted + 1] = p
  end
  return deleted
end

--- Logs a message.
-- Inside nbdkit it goes to the filter's log (`package.loaded["luacow.host"].log`);
-- elsewhere to stderr as "luacow: msg".  Arguments are converted with
-- `tostring` and joined with spaces.
function M.log (...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  local msg = table.concat(parts, " ")
  local host = package.loaded["luacow.host"]
  if type(host) == "table" and type(host.log) == "function" then
    host.log(msg)
  else
    io.stderr:write("luacow: ", msg, "\n")
  end
end

---------------------------------------------------------------- policy

-- The default rule for `save`, bound to policy P: save at exit when
-- anything changed and P has a name for the file.
local function default_save (P)
  return function (ctx)
    return ctx.event == "exit"
      and (ctx.dirty_bytes or 0) + (ctx.zero_bytes or 0) > 0
      and M.evaluate(P, "name", ctx) ~= nil
  end
end

local function param (t, key)
  local params = type(t) == "table" and t.params
  local v = type(params) == "table" and params[key] or nil
  if type(v) == "string" and v ~= "" then return v end
  return nil
end

-- How parameter luacow-KEY=V is shown in messages (quoted when odd).
local function param_text (key, v)
  return "luacow-" .. key .. "=" .. (v:find("[%c\"\\]") and show(v) or v)
end

-- The template v of luacow-KEY= expanded with t (called root), for field.
local function expand_param (field, key, v, t, root)
  local s, err, tail = expand_with(v, t, root)
  if not s then fail(field .. ": " .. param_text(key, v) .. ": " .. err .. tail) end
  return s
end

-- The journal named by template v of luacow-KEY= (journal or save), with
-- disk.  It must come out the same at every start, so no {time}; and a
-- save template may use only what disk has.
local function journal_from (key, v, disk)
  local what = param_text(key, v)
  local parts, err, tail = parse_template(v)
  if not parts then fail("journal: " .. what .. ": " .. err .. tail) end
  local fix = key == "save" and "; set luacow-journal=PATH or luacow-journal=off" or ""
  for _, p in ipairs(parts) do
    if type(p) == "table" and is_time(p.key) then
      fail(("journal: %s cannot name the journal (it uses {%s}, so every start would get a new journal)%s")
           :format(what, p.key, fix))
    end
  end
  local s, missing, pkey
  s, err, missing, pkey = fill_template(parts, disk, "disk")
  if not s and missing and key == "save" then
    fail(("journal: %s cannot name the journal (it uses {%s}, and %s is nil when the journal is opened)%s")
         :format(what, pkey, missing, fix))
  end
  if not s then fail("journal: " .. what .. ": " .. err) end
  return key == "save" and s .. ".journal" or s
end

-- The default rule for `journal`, bound to policy P: `luacow-journal=PATH`
-- (`off` for none), else the save path P names at startup (a static
-- `name`, or `luacow-save=` with the default `name`) plus ".journal".
local function default_journal (P)
  return function (disk)
    local j = param(disk, "journal")
    if j == "off" then return false end
    if j then return journal_from("journal", j, disk) end
    local n = P.name
    if n == M.default.name then
      local s = param(disk, "save")
      return s and journal_from("save", s, disk) or false
    end
    if type(n) == "string" and n ~= "" then return n .. ".journal" end
    return false
  end
end

--- The default policy, field by field.  A script's missing fields are
-- taken from here.
-- @table default
M.default = {
  --- 64 KiB clusters, as qemu-img (the filter sets cow-block-size= here).
  cluster_size = 65536,
  --- Reload `luacow-load=TEMPLATE`, expanded with disk, if that file exists
  -- (relative to disk.cwd).
  load = function (disk)
    local p = param(disk, "load")
    if not p then return nil end
    local path = expand_param("load", "load", p, disk, "disk")
    if path == "" then fail("load: " .. param_text("load", p) .. " expands to an empty path") end
    if M.exists(M.resolve(path, disk.cwd)) then return path end
    return nil
  end,
  --- `luacow-journal=TEMPLATE` expanded with disk, else the static save
  -- path plus ".journal".
  journal = nil, -- set below
  --- Only "exit".
  events = {},
  --- No "interval" events.
  interval = nil,
  --- Save at exit if anything was written and `name` gives a path.
  -- (Each merged policy gets its own copy, which asks that policy's `name`.)
  save = nil, -- set below
  --- `luacow-save=TEMPLATE` expanded with ctx, or nil.
  name = function (ctx)
    local p = param(ctx, "save")
    return p and expand_param("name", "save", p, ctx, "ctx")
  end,
  --- No backing file.
  backing = nil,
  --- Uncompressed.
  compress = false,
  --- Nothing after a save.
  saved = nil,
  --- cow-on-read= on the command line (the filter sets it), else false.
  cow_on_read = false,
  --- cow-on-cache= on the command line (the filter sets it), else false.
  cow_on_cache = false,
}
M.default.save = default_save(M.default)
M.default.journal = default_journal(M.default)

--- Validates a policy script's result and merges it with the defaults.
--
-- Unknown fields and invalid static values are errors (raised without
-- position); functions are checked when `evaluate` calls them.  Static
-- values are stored normalized (`"64K"` becomes 65536, `events` a fresh list
-- of unique names, `backing` a table; false stays false).
-- @tparam table t what the script returned
-- @treturn table P with every field present that has a non-nil default
function M.policy (t)
  if type(t) ~= "table" then
    fail("policy must return a table, got " .. type(t))
  end
  local unknown = {}
  for k in pairs(t) do
    if not IS_FIELD[k] then unknown[#unknown + 1] = k end
  end
  if #unknown > 0 then
    table.sort(unknown, function (a, b) return tostring(a) < tostring(b) end)
    local names = {}
    for i, k in ipairs(unknown) do
      names[i] = type(k) == "string" and "'" .. k .. "'" or show(k)
    end
    local msg = (#unknown == 1 and "unknown field " or "unknown fields ")
      .. table.concat(names, ", ")
    if #unknown == 1 and type(unknown[1]) == "string" then
      local best, bestd = nil, math.max(2, #unknown[1] // 3) + 1
      for _, f in ipairs(M.FIELDS) do
        local d = levenshtein(unknown[1], f)
        if d < bestd then best, bestd = f, d end
      end
      if best then msg = msg .. " (did you mean '" .. best .. "'?)" end
    end
    fail(msg .. "; valid fields are " .. table.concat(M.FIELDS, ", "))
  end

  local P = {}
  for _, f in ipairs(M.FIELDS) do
    local v = t[f]
    if v == nil then
      if f == "save" then
        P.save = default_save(P)
      elseif f == "journal" then
        P.journal = default_journal(P)
      elseif type(M.default[f]) == "table" then
        P[f] = check[f](M.default[f])
      else
        P[f] = M.default[f]
      end
    elseif type(v) == "function" then
      P[f] = v
    else
      local norm = check[f](v)
      if norm == nil and v == false then norm = false end
      P[f] = norm
    end
  end

  if type(P.events) == "table" and contains(P.events, "interval")
     and type(P.interval) ~= "function" and check.interval(P.interval) == nil then
    fail('interval must be a number of seconds > 0 when events include "interval", got '
         .. show(P.interval))
  end
  return P
end

--- Computes one field of a merged policy.
-- Calls `P[field](...)` if it is a function (else takes the value), then
-- validates and normalizes the result:
--
-- * cluster_size: integer (strings such as "64K" accepted)
-- * load, name: nil or a non-empty string (false gives nil)
-- * journal: false or a non-empty string (nil gives false)
-- * events: a new list of unique names among "flush", "close", "interval"
-- * interval: nil or a number > 0; required when events include "interval"
--   (then `P.events` is evaluated too)
-- * save: boolean (nil gives false)
-- * backing: nil or `{file=, format= (default "raw"), embed= (default false)}`;
--   a string s gives `{file=s, format="raw", embed=false}`
-- * compress: false, "deflate" or "zstd" (true gives "deflate")
-- * saved: the function is called, its result ignored; returns nil
-- * cow_on_read: false, true or a path (nil gives false)
-- * cow_on_cache: boolean (nil gives false)
--
-- Wrong results raise `"<field> must be ..., got ..."` without position.
-- @tparam table P from `luacow.policy`
-- @tparam string field
-- @param ... the field's arguments (disk, ctx or ctx, result)
-- @return the normalized value
function M.evaluate (P, field, ...)
  if type(P) ~= "table" then
    error("luacow.evaluate: policy must be a table, got " .. show(P), 2)
  end
  if not IS_FIELD[field] then
    error("luacow.evaluate: unknown field " .. show(field) .. "; valid fields are "
          .. table.concat(M.FIELDS, ", "), 2)
  end
  local v = P[field]
  if type(v) == "function" then
    if field == "saved" then
      v(...)
      return nil
    end
    v = (v(...))
  end
  local r = check[field](v)
  if field == "interval" and r == nil and contains(M.evaluate(P, "events"), "interval") then
    fail('interval must be a number of seconds > 0 when events include "interval", got '
         .. show(v))
  end
  return r
end

return M
