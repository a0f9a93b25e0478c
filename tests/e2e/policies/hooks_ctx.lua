-- Test policy of tests/e2e/policy_hooks.sh.
-- Saves at every flush and at exit; saved() writes one line of ctx and
-- result fields per save to params.out.
local luacow = require "luacow"
local function s (v) if v == nil then return "nil" end return tostring(v) end
return {
  events = { "flush" },
  save = function (ctx) return ctx.dirty_bytes + ctx.zero_bytes > 0 end,
  name = function (ctx) return luacow.expand("ctx-{params.tag}-{event}.qcow2", ctx) end,
  saved = function (ctx, r)
    local f = assert(io.open(ctx.params.out, "a"))
    local ls = ctx.last_save or {}
    f:write(table.concat({
      "event=" .. ctx.event, "size=" .. ctx.size, "cs=" .. ctx.cluster_size,
      "dirty=" .. ctx.dirty_bytes, "zero=" .. ctx.zero_bytes, "written=" .. ctx.written_bytes,
      "data=" .. ctx.data_clusters, "zc=" .. ctx.zero_clusters,
      "loaded=" .. s(ctx.loaded), "last=" .. s(ls.path), "lasttime=" .. s(ls.time),
      ("started=%.3f"):format(ctx.started), ("now=%.3f"):format(ctx.now),
      "tag=" .. s(ctx.params.tag), "cwd=" .. s(ctx.cwd), "script=" .. s(ctx.script),
      "path=" .. r.path, "rdata=" .. r.data_clusters, "rzero=" .. r.zero_clusters,
      "bytes=" .. r.bytes, "seconds=" .. s(r.seconds),
      "types=" .. table.concat({ math.type(r.data_clusters), math.type(r.bytes), type(r.seconds),
                                 math.type(ctx.dirty_bytes), type(ctx.now) }, ","),
    }, " "), "\n")
    f:close()
  end,
}
