-- checkpoint.lua: save when the guest flushes, at most every N seconds,
-- and always at exit if anything changed since the last save.
--
--   nbdkit file disk.img --filter=luacow luacow-script=checkpoint.lua \
--       luacow-save=vm.qcow2 luacow-every=60
--
-- The checkpoint is luacow-save= (default "checkpoint.qcow2") and is
-- reloaded at startup when it exists, so a crash loses at most the writes
-- of the last luacow-every= seconds (default 30) before the last flush.
local luacow = require "luacow"

-- A template: serving several exports, put {export} in luacow-save= so
-- each has its own checkpoint (not {time} or {event}: load would look for
-- a file of another name).
local function file (disk)
  local p = disk.params.save
  if p == nil or p == "" then p = "checkpoint.qcow2" end
  return luacow.expand(p, disk)
end

return {
  -- "exit" is always an event; also ask for one on every flush.
  events = { "flush" },

  save = function (ctx)
    if ctx.dirty_bytes + ctx.zero_bytes == 0 then return false end  -- nothing new
    if ctx.event == "exit" then return true end
    local every = tonumber(ctx.params.every) or 30
    local since = ctx.last_save and ctx.last_save.time or ctx.started
    return ctx.event == "flush" and ctx.now - since >= every
  end,

  name = file,

  load = function (disk)
    local p = file(disk)
    if luacow.exists(luacow.resolve(p, disk.cwd)) then return p end
    return nil
  end,
}
