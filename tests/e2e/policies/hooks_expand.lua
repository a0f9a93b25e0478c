-- Test policy of tests/e2e/policy_hooks.sh.
local luacow = require "luacow"
return {
  -- relative: resolved against the directory nbdkit started in
  name = function (ctx) return luacow.expand("sub/{params.x}-{event}-{time:%Y}.qcow2", ctx) end,
  load = function (disk) return disk.params.prev end,
}
