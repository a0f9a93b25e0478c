-- Test policy of tests/e2e/policy_hooks.sh: hooks_ctx.lua (named by the
-- CTX_POLICY environment variable) plus a load hook, and a save at every
-- flush even when nothing changed (so that saved() shows the ctx).
local P = dofile(os.getenv("CTX_POLICY"))
local save = P.save
P.load = function (disk) return disk.params.prev end
P.save = function (ctx) return ctx.event == "flush" or save(ctx) end
return P
