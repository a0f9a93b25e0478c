-- fixed.lua: one overlay file, saved at exit, reloaded at the next start.
--
--   nbdkit file disk.img --filter=luacow \
--       luacow-script=fixed.lua luacow-save=/var/lib/vm/overlay.qcow2
--
-- The file is luacow-save=PATH, or "overlay.qcow2" in the directory nbdkit
-- was started from.  Saving happens at exit only when something was
-- written (the default `save` rule).
local luacow = require "luacow"

-- The overlay's path, as given (relative paths are relative to disk.cwd).
-- A template: serving several exports, put {export} in it
-- (luacow-save=/var/lib/vm/overlay-{export}.qcow2) so each has its own.
-- Not {time} or {event}: load would look for a file of another name.
local function overlay (disk)
  local p = disk.params.save
  if p == nil or p == "" then p = "overlay.qcow2" end
  return luacow.expand(p, disk)
end

return {
  -- At startup: reload the overlay if a previous run left one.
  load = function (disk)
    local p = overlay(disk)
    if luacow.exists(luacow.resolve(p, disk.cwd)) then return p end
    return nil
  end,

  -- When saving: always the same file (the filter replaces it).
  name = overlay,
}
