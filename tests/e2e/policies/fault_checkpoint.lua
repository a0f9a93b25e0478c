-- Test policy of tests/e2e/fault_save.sh: save at every flush that follows
-- a write, and at exit, to params.dir/target.qcow2.
return {
  events = { "flush" },
  save = function (ctx) return ctx.written_bytes > 0 end,
  name = function (ctx) return ctx.params.dir .. "/target.qcow2" end,
}
