-- Shared setup for the busted specs (not a spec itself: busted only runs
-- *_spec.lua).  Each spec starts with
--
--   local H = dofile((debug.getinfo(1, "S").source:match("^@(.*)/") or ".") .. "/helper.lua")
--
-- Normally the specs test the tree: "lua/?.lua" goes first on
-- package.path, and `H.core()` compiles plugin/luacow_core.c into a
-- temporary directory (or loads $LUACOW_CORE_SO when set) and fails if it
-- cannot.  With LUACOW_INSTALLED=<tree> (tests/e2e/rockspec.sh) nothing is
-- added: luacow and luacow.core must come from LUA_PATH/LUA_CPATH, and from
-- under <tree>.
local H = {}

-- The top of the tree, absolute: this file is <top>/tests/spec/helper.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
do
  local p = assert(io.popen("cd '" .. here:gsub("'", "'\\''") .. "/../..' && pwd -P"))
  H.top = p:read("l")
  p:close()
  assert(H.top and H.top:sub(1, 1) == "/", "cannot find the top of the tree from " .. here)
end

H.installed = os.getenv("LUACOW_INSTALLED")
if H.installed == "" then H.installed = nil end

if not H.installed then
  local entry = H.top .. "/lua/?.lua;"
  if package.path:sub(1, #entry) ~= entry then package.path = entry .. package.path end
end

--- Quotes s for /bin/sh.
function H.q (s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Runs a shell command; returns true, output or false, output.
function H.sh (cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok == true, out
end

--- A new private temporary directory.
function H.tmpdir ()
  local ok, out = H.sh("mktemp -d \"${TMPDIR:-/tmp}/luacow-spec.XXXXXX\"")
  assert(ok, "mktemp -d failed: " .. out)
  return (out:gsub("%s+$", ""))
end

function H.rmrf (dir)
  if dir and dir:match("luacow%-spec%.") then os.execute("rm -rf -- " .. H.q(dir)) end
end

--- Creates (or truncates) a file, with mtime `t` (seconds since the epoch) if given.
function H.touch (path, t, content)
  local f = assert(io.open(path, "wb"))
  f:write(content or "x")
  f:close()
  if t then
    local ok, out = H.sh("touch -d @" .. string.format("%.3f", t) .. " " .. H.q(path))
    assert(ok, "touch failed: " .. out)
  end
end

function H.mkdir (path, t)
  local ok, out = H.sh("mkdir -p " .. H.q(path) .. (t and (" && touch -d @" .. t .. " " .. H.q(path)) or ""))
  assert(ok, "mkdir failed: " .. out)
end

--- Whether a path exists.
function H.exists (path)
  return (H.sh("test -e " .. H.q(path)))
end

--- Where a module would be loaded from (nil if nowhere).
function H.origin (name, c)
  return (package.searchpath(name, c and package.cpath or package.path))
end

--- Makes require "luacow.core" work; returns the module.  Errors (so the
-- spec fails, it is not skipped) when the C module cannot be built.
function H.core ()
  if package.loaded["luacow.core"] then return package.loaded["luacow.core"] end
  if not H.installed then
    local so = os.getenv("LUACOW_CORE_SO")
    if not so or so == "" then
      H.core_dir = H.core_dir or H.tmpdir()
      so = H.core_dir .. "/luacow/core.so"
      if not H.exists(so) then
        local cc = os.getenv("CC") or "cc"
        local inc = os.getenv("LUA_INCDIR") or "/usr/include/lua5.4"
        local cmd = table.concat({
          "mkdir -p", H.q(H.core_dir .. "/luacow"), "&&",
          cc, "-std=c11 -shared -fPIC -O2 -Wall -Wextra -Werror",
          "-Wmissing-prototypes -Wstrict-prototypes -Wshadow",
          "-I" .. H.q(inc), "-I" .. H.q(H.top .. "/plugin"),
          H.q(H.top .. "/plugin/luacow_core.c"), "-o", H.q(so) }, " ")
        local ok, out = H.sh(cmd)
        if not ok then error("cannot build luacow.core:\n" .. cmd .. "\n" .. out, 0) end
      end
    end
    local loader, err = package.loadlib(so, "luaopen_luacow_core")
    if not loader then error("cannot load " .. so .. ": " .. tostring(err), 0) end
    package.preload["luacow.core"] = loader
    H.core_so = so
  end
  return require "luacow.core"
end

--- Removes what H.core() built.
function H.cleanup ()
  if H.core_dir then H.rmrf(H.core_dir) end
  H.core_dir = nil
end

--- Loads lua/examples/NAME.lua and returns what it returns (the policy table).
function H.example (name)
  return dofile(H.top .. "/lua/examples/" .. name .. ".lua")
end

--- Calls f and returns its error message (fails if f does not raise).
function H.error_of (f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error, got success")
  return err
end

return H
