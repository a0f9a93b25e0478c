-- rotate.lua: a new timestamped overlay on every save, keeping the newest N.
--
--   nbdkit file disk.img --filter=luacow luacow-script=rotate.lua \
--       luacow-dir=/var/lib/vm/overlays luacow-keep=3
--
-- Files are DIR/overlay-YYYYmmdd-HHMMSS-EVENT.qcow2 (DIR is luacow-dir=, or
-- the directory nbdkit was started from).  At startup the newest one is
-- reloaded; after each save all but the newest luacow-keep= (default 5)
-- are deleted.
local luacow = require "luacow"

local TEMPLATE = "overlay-{time:%Y%m%d-%H%M%S}-{event}.qcow2"
local PATTERN = "overlay-*.qcow2"

-- The directory of the overlays, absolute (latest and keep look at the
-- file system, so they must not depend on the filter's own directory).
local function dir (disk)
  local d = disk.params.dir
  if d == nil or d == "" then return disk.cwd end
  return luacow.resolve(d, disk.cwd)
end

return {
  load = function (disk)
    return luacow.latest(dir(disk) .. "/" .. PATTERN)
  end,

  name = function (ctx)
    return dir(ctx) .. "/" .. luacow.expand(TEMPLATE, ctx)
  end,

  saved = function (ctx, result)
    local n = tonumber(ctx.params.keep) or 5
    for _, path in ipairs(luacow.keep(dir(ctx) .. "/" .. PATTERN, n)) do
      luacow.log("rotate: removed", path, "(kept the newest " .. n .. ", latest " .. result.path .. ")")
    end
  end,
}
