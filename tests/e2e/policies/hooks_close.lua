-- Test policy of tests/e2e/policy_hooks.sh.
return {
  events = { "close" },
  save = function (ctx) return ctx.event == "close" and ctx.written_bytes > 0 end,
  name = function (ctx) return ctx.params.dir .. "/close-" .. ctx.written_bytes .. ".qcow2" end,
}
