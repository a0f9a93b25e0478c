-- rotate.lua: a new timestamped overlay on every save, keeping the newest N.
--
--   nbdkit file disk.img --filter=luacow luacow-script=rotate.lua \
--       luacow-dir=/var/lib/vm/overlays luacow-keep=3
--
-- Files are DIR/overlay-YYYYmmdd-HHMMSS-EVENT.qcow2 (DIR is luacow-dir=, or
-- the directory nbdkit was started from).  At startup the newest one is
-- reloaded; after each save all but the newest luacow-keep= (default 5)
-- are deleted.
--
-- Each export has files of its own: a named export's are
-- DIR/export-NAME@YYYYmmdd-HHMMSS-EVENT.qcow2, NAME being luacow.safe_name
-- of it.  A safe name never holds "@", so no export's pattern matches
-- another's files: an export reloads and deletes only its own.  (Before,
-- named exports wrote overlay-*.qcow2 too: move such files away before
-- serving several exports, or the default export takes them for its own.)
local luacow = require "luacow"

local TEMPLATE = "{time:%Y%m%d-%H%M%S}-{event}.qcow2"

-- The start of this export's file names (t is disk or ctx).
local function prefix (t)
  if t.export == nil or t.export == "" then return "overlay-" end
  return "export-" .. luacow.safe_name(t.export) .. "@"
end

-- The directory of the overlays, absolute (latest and keep look at the
-- file system, so they must not depend on the filter's own directory).
local function dir (disk)
  local d = disk.params.dir
  if d == nil or d == "" then return disk.cwd end
  return luacow.resolve(d, disk.cwd)
end

-- This export's files, as a glob(3) pattern.  The directory is quoted:
-- a "[", "*", "?" or backslash in it must match itself, not some other
-- directory (whose files keep would delete).
local function pattern (t)
  return (dir(t):gsub("[%[%]*?\\]", "\\%0")) .. "/" .. prefix(t) .. "*.qcow2"
end

return {
  load = function (disk)
    return luacow.latest(pattern(disk))
  end,

  name = function (ctx)
    return dir(ctx) .. "/" .. prefix(ctx) .. luacow.expand(TEMPLATE, ctx)
  end,

  saved = function (ctx, result)
    local n = tonumber(ctx.params.keep) or 5
    for _, path in ipairs(luacow.keep(pattern(ctx), n)) do
      luacow.log("rotate: removed", path, "(kept the newest " .. n .. ", latest " .. result.path .. ")")
    end
  end,
}
