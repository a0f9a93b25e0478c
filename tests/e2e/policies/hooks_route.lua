-- Test policy of tests/e2e/policy_hooks.sh.
-- The policy: a recognizable name and a marker from saved.
return {
  save = function (ctx) return ctx.event == "exit" end,
  name = function (ctx) return ctx.params.dir .. "/routed.qcow2" end,
  saved = function (ctx, r) local f = assert(io.open(ctx.params.dir .. "/policy-ran", "w")); f:close() end,
}
