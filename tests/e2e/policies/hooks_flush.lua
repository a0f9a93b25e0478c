-- Test policy of tests/e2e/policy_hooks.sh.
return {
  events = { "flush" },
  save = function (ctx) return ctx.event == "flush" end,
  name = function (ctx) return ctx.params.dir .. "/flush-" .. ctx.written_bytes .. ".qcow2" end,
}
