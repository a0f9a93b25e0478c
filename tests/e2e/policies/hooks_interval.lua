-- Test policy of tests/e2e/policy_hooks.sh.
return {
  events = { "interval" },
  interval = 1,
  save = function (ctx) return ctx.event == "interval" and ctx.written_bytes > 0 end,
  name = function (ctx) return ctx.params.dir .. "/interval.qcow2" end,
}
