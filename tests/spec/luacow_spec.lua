-- Specs for lua/luacow.lua: policy(), evaluate(), default and the helpers.
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*)/") or ".") .. "/helper.lua")
local luacow = require "luacow"

local VALID = "valid fields are cluster_size, load, journal, events, interval, save, name, backing, compress, saved, "
  .. "cow_on_read, cow_on_cache"
local CLUSTER = "cluster_size must be a power of two from 512 to 2097152, got "
local EVENTS = 'events must be a list of "flush", "close" and "interval", got '
local INTERVAL_REQUIRED = 'interval must be a number of seconds > 0 when events include "interval", got '

-- A ctx as the filter would pass it.
local function ctx (over)
  local c = {
    size = 1 << 30, cluster_size = 65536, params = { save = "out.qcow2" }, cwd = "/nonexistent",
    script = "/etc/luacow/policy.lua", event = "exit", dirty_bytes = 4096, zero_bytes = 0,
    written_bytes = 4096, data_clusters = 1, zero_clusters = 0, started = 1700000000,
    now = 1700000100, loaded = nil, last_save = nil,
  }
  for k, v in pairs(over or {}) do c[k] = v end
  return c
end

-- The message of the error that policy(t) raises.
local function policy_error (t)
  return H.error_of(luacow.policy, t)
end

-- The message of the error that evaluating a function field returning v raises.
local function eval_error (field, v)
  local P = luacow.policy({ [field] = function () return v end })
  return H.error_of(luacow.evaluate, P, field, ctx())
end

describe("luacow module", function ()
  it("is loaded from the tree under test", function ()
    local origin = H.origin("luacow")
    if H.installed then
      if H.installed ~= "1" then
        assert.equal(H.installed .. "/share/lua/5.4/luacow.lua", origin)
      end
      assert.not_matches("/lua/luacow%.lua$", origin)
    else
      assert.equal(H.top .. "/lua/luacow.lua", origin)
    end
    assert.equal(luacow, package.loaded.luacow)
  end)

  it("lists its fields and events", function ()
    assert.same({ "cluster_size", "load", "journal", "events", "interval", "save", "name",
                  "backing", "compress", "saved", "cow_on_read", "cow_on_cache" }, luacow.FIELDS)
    assert.same({ "flush", "close", "interval" }, luacow.EVENTS)
  end)
end)

describe("the journal field", function ()
  local function disk (params) return { size = 1 << 20, params = params or {}, cwd = "/d" } end

  it("defaults to the save path plus .journal", function ()
    local P = luacow.policy({})
    assert.equal("ov.qcow2.journal", luacow.evaluate(P, "journal", disk({ save = "ov.qcow2" })))
  end)
  it("is false without a save path", function ()
    assert.is_false(luacow.evaluate(luacow.policy({}), "journal", disk()))
  end)
  it("takes luacow-journal=PATH, and off for none", function ()
    local P = luacow.policy({})
    assert.equal("j", luacow.evaluate(P, "journal", disk({ save = "ov.qcow2", journal = "j" })))
    assert.is_false(luacow.evaluate(P, "journal", disk({ save = "ov.qcow2", journal = "off" })))
  end)
  it("follows a static name of the policy's own", function ()
    local P = luacow.policy({ name = "/srv/vm.qcow2" })
    assert.equal("/srv/vm.qcow2.journal", luacow.evaluate(P, "journal", disk()))
  end)
  it("is false for a name that is a function (no path at startup)", function ()
    local P = luacow.policy({ name = function (ctx) return ctx.event .. ".qcow2" end })
    assert.is_false(luacow.evaluate(P, "journal", disk({ save = "ov.qcow2" })))
  end)
  it("may be set by the policy, statically or as a function", function ()
    assert.equal("x.j", luacow.evaluate(luacow.policy({ journal = "x.j" }), "journal", disk()))
    assert.is_false(luacow.evaluate(luacow.policy({ journal = false }), "journal",
                                    disk({ save = "ov.qcow2" })))
    local P = luacow.policy({ journal = function (d) return d.cwd .. "/f.j" end })
    assert.equal("/d/f.j", luacow.evaluate(P, "journal", disk()))
  end)
  it("rejects what is not false or a path", function ()
    assert.has_error(function () luacow.policy({ journal = 5 }) end,
                     "journal must be false or a path (non-empty string), got 5")
    assert.has_error(function () luacow.evaluate(luacow.policy({ journal = function () return "" end }),
                                                 "journal", disk()) end,
                     'journal must be false or a path (non-empty string), got ""')
  end)
end)

describe("luacow.policy", function ()
  it("fills every field from the defaults", function ()
    local P = luacow.policy({})
    assert.equal(65536, P.cluster_size)
    assert.equal("function", type(P.load))
    assert.same({}, P.events)
    assert.is_nil(P.interval)
    assert.equal("function", type(P.save))
    assert.equal("function", type(P.name))
    assert.is_nil(P.backing)
    assert.is_false(P.compress)
    assert.is_nil(P.saved)
  end)

  it("returns a new table and leaves the script's table alone", function ()
    local t = { cluster_size = "4K", events = { "flush", "flush" } }
    local P = luacow.policy(t)
    assert.not_equal(t, P)
    assert.same({ cluster_size = "4K", events = { "flush", "flush" } }, t)
    assert.not_equal(luacow.default.events, P.events)
    assert.not_equal(luacow.policy({}).events, luacow.policy({}).events)
  end)

  it("stores static values normalized", function ()
    local P = luacow.policy({ cluster_size = "64K", events = { "close", "flush", "close" },
                              backing = "base.img", compress = true, load = false, name = false })
    assert.equal(65536, P.cluster_size)
    assert.equal("integer", math.type(P.cluster_size))
    assert.same({ "close", "flush" }, P.events)
    assert.same({ file = "base.img", format = "raw", embed = false }, P.backing)
    assert.equal("deflate", P.compress)
    assert.is_false(P.load)
    assert.is_false(P.name)
  end)

  it("keeps functions as they are, unchecked until evaluated", function ()
    local f = function () return 1000 end
    local P = luacow.policy({ cluster_size = f, saved = f, events = f, interval = f })
    assert.equal(f, P.cluster_size)
    assert.equal(f, P.saved)
  end)

  it("accepts its own result again", function ()
    local P = luacow.policy(luacow.policy({ cluster_size = "1M", events = { "interval" }, interval = 5 }))
    assert.equal(1048576, P.cluster_size)
    assert.same({ "interval" }, P.events)
    assert.equal(5, P.interval)
  end)

  it("rejects a script that does not return a table", function ()
    assert.equal("policy must return a table, got nil", policy_error(nil))
    assert.equal("policy must return a table, got string", policy_error("x"))
    assert.equal("policy must return a table, got number", policy_error(42))
    assert.equal("policy must return a table, got boolean", policy_error(true))
    assert.equal("policy must return a table, got function", policy_error(print))
  end)

  it("rejects unknown fields, suggesting the closest one", function ()
    assert.equal("unknown field 'clustr_size' (did you mean 'cluster_size'?); " .. VALID,
                 policy_error({ clustr_size = 65536 }))
    assert.equal("unknown field 'events_' (did you mean 'events'?); " .. VALID,
                 policy_error({ events_ = {} }))
    assert.equal("unknown field 'frobnicate'; " .. VALID, policy_error({ frobnicate = 1 }))
    assert.equal("unknown fields 'bar', 'foo'; " .. VALID, policy_error({ foo = 1, bar = 2 }))
    assert.equal("unknown field 1; " .. VALID, policy_error({ "flush" }))
  end)

  it("raises errors without a position", function ()
    local err = policy_error({ cluster_size = 1000 })
    assert.equal(CLUSTER .. "1000", err)
    assert.not_matches("%.lua:%d+:", err)
  end)

  it("checks a static cluster_size", function ()
    for _, bad in ipairs({ 0, 256, 511, 513, 1000, 4194304, -512, 1.5, 65536.5, 1 / 0 }) do
      assert.equal(CLUSTER .. tostring(bad), policy_error({ cluster_size = bad }))
    end
    assert.equal(CLUSTER .. '"64Q"', policy_error({ cluster_size = "64Q" }))
    assert.equal(CLUSTER .. '"4M"', policy_error({ cluster_size = "4M" }))
    assert.equal(CLUSTER .. '"1000"', policy_error({ cluster_size = "1000" }))
    assert.equal(CLUSTER .. "true", policy_error({ cluster_size = true }))
    assert.equal(CLUSTER .. "false", policy_error({ cluster_size = false }))
    assert.equal(CLUSTER .. "table", policy_error({ cluster_size = {} }))
    for _, good in ipairs({ 512, 4096, 65536, 2097152 }) do
      assert.equal(good, luacow.policy({ cluster_size = good }).cluster_size)
    end
    assert.equal("integer", math.type(luacow.policy({ cluster_size = 4096.0 }).cluster_size))
    assert.equal(512, luacow.policy({ cluster_size = "512" }).cluster_size)
    assert.equal(2097152, luacow.policy({ cluster_size = "2m" }).cluster_size)
  end)

  it("checks a static load", function ()
    local msg = "load must be nil, false or a path (non-empty string), got "
    assert.equal(msg .. '""', policy_error({ load = "" }))
    assert.equal(msg .. "42", policy_error({ load = 42 }))
    assert.equal(msg .. "true", policy_error({ load = true }))
    assert.equal(msg .. "table", policy_error({ load = {} }))
    assert.equal("old.qcow2", luacow.policy({ load = "old.qcow2" }).load)
  end)

  it("checks static events", function ()
    assert.equal(EVENTS .. '"flush"', policy_error({ events = "flush" }))
    assert.equal(EVENTS .. "true", policy_error({ events = true }))
    assert.equal(EVENTS .. '"exit" at index 1 ("exit" is always an event)',
                 policy_error({ events = { "exit" } }))
    assert.equal(EVENTS .. '"write" at index 2', policy_error({ events = { "flush", "write" } }))
    assert.equal(EVENTS .. "42 at index 1", policy_error({ events = { 42 } }))
    assert.equal(EVENTS .. 'a table with key "flush"', policy_error({ events = { flush = true } }))
    -- a hole: either the border stops before it or the hole is reported
    assert.matches("^events must be a list of .*, got ", policy_error({ events = { "flush", nil, "close" } }))
    assert.equal(EVENTS .. 'a table with key 0', policy_error({ events = { [0] = "flush" } }))
    assert.same({ "flush", "close", "interval" },
                luacow.policy({ events = { "flush", "close", "flush", "interval" }, interval = 1 }).events)
  end)

  it("requires an interval when events include \"interval\"", function ()
    assert.equal(INTERVAL_REQUIRED .. "nil", policy_error({ events = { "interval" } }))
    assert.equal(INTERVAL_REQUIRED .. "false", policy_error({ events = { "interval" }, interval = false }))
    assert.has_no.errors(function () luacow.policy({ events = { "interval" }, interval = 60 }) end)
    -- functions are only checked when evaluated
    assert.has_no.errors(function ()
      luacow.policy({ events = { "interval" }, interval = function () return 60 end })
    end)
    assert.has_no.errors(function ()
      luacow.policy({ events = function () return { "interval" } end })
    end)
  end)

  it("checks a static interval", function ()
    local msg = "interval must be nil or a number of seconds > 0, got "
    assert.equal(msg .. "0", policy_error({ interval = 0 }))
    assert.equal(msg .. "-1", policy_error({ interval = -1 }))
    assert.equal(msg .. "inf", policy_error({ interval = math.huge }))
    assert.matches("^interval must be nil or a number of seconds > 0, got %-?nan$",
                   policy_error({ interval = 0 / 0 }))
    assert.equal(msg .. '"30"', policy_error({ interval = "30" }))
    assert.equal(msg .. "true", policy_error({ interval = true }))
    assert.equal(0.5, luacow.policy({ interval = 0.5 }).interval)
  end)

  it("checks a static save", function ()
    local msg = "save must be a boolean (nil means false), got "
    assert.equal(msg .. '"yes"', policy_error({ save = "yes" }))
    assert.equal(msg .. "1", policy_error({ save = 1 }))
    assert.equal(msg .. "table", policy_error({ save = {} }))
    assert.is_true(luacow.policy({ save = true }).save)
    assert.is_false(luacow.policy({ save = false }).save)
  end)

  it("checks a static name", function ()
    local msg = "name must be nil or a path (non-empty string), got "
    assert.equal(msg .. '""', policy_error({ name = "" }))
    assert.equal(msg .. "1", policy_error({ name = 1 }))
    assert.equal(msg .. "true", policy_error({ name = true }))
    assert.equal("a.qcow2", luacow.policy({ name = "a.qcow2" }).name)
  end)

  it("checks a static backing", function ()
    assert.equal('backing must be nil, a path or {file=, format=, embed=}, got ""',
                 policy_error({ backing = "" }))
    assert.equal("backing must be nil, a path or {file=, format=, embed=}, got 42",
                 policy_error({ backing = 42 }))
    assert.equal("backing must be nil, a path or {file=, format=, embed=}, got true",
                 policy_error({ backing = true }))
    assert.equal('backing must be {file=, format=, embed=}, got unknown key "fmt"',
                 policy_error({ backing = { file = "b", fmt = "raw" } }))
    assert.equal("backing.file must be a path (non-empty string), got nil",
                 policy_error({ backing = { format = "raw" } }))
    assert.equal('backing.file must be a path (non-empty string), got ""',
                 policy_error({ backing = { file = "" } }))
    assert.equal('backing.format must be a non-empty string such as "raw" or "qcow2", got 1',
                 policy_error({ backing = { file = "b", format = 1 } }))
    assert.equal('backing.format must be a non-empty string such as "raw" or "qcow2", got ""',
                 policy_error({ backing = { file = "b", format = "" } }))
    assert.equal('backing.embed must be a boolean, got "yes"',
                 policy_error({ backing = { file = "b", embed = "yes" } }))
    assert.same({ file = "b", format = "qcow2", embed = true },
                luacow.policy({ backing = { file = "b", format = "qcow2", embed = true } }).backing)
    assert.same({ file = "b", format = "raw", embed = false },
                luacow.policy({ backing = { file = "b" } }).backing)
    assert.is_false(luacow.policy({ backing = false }).backing)
  end)

  it("checks a static compress", function ()
    local msg = 'compress must be false, true, "deflate" or "zstd", got '
    assert.equal(msg .. '"gzip"', policy_error({ compress = "gzip" }))
    assert.equal(msg .. '"ZSTD"', policy_error({ compress = "ZSTD" }))
    assert.equal(msg .. "1", policy_error({ compress = 1 }))
    assert.equal("zstd", luacow.policy({ compress = "zstd" }).compress)
    assert.equal("deflate", luacow.policy({ compress = "deflate" }).compress)
    assert.is_false(luacow.policy({ compress = false }).compress)
  end)

  it("checks a static saved", function ()
    assert.equal("saved must be nil or a function, got true", policy_error({ saved = true }))
    assert.equal('saved must be nil or a function, got "log"', policy_error({ saved = "log" }))
  end)
end)

describe("luacow.evaluate", function ()
  it("calls function fields with their arguments", function ()
    local got
    local P = luacow.policy({ cluster_size = function (disk) got = disk; return "4K" end })
    local disk = { size = 1 << 20, params = {}, cwd = "/", script = "/p.lua" }
    assert.equal(4096, luacow.evaluate(P, "cluster_size", disk))
    assert.equal(disk, got)
  end)

  it("returns static values normalized", function ()
    local P = luacow.policy({ cluster_size = 8192, name = "x.qcow2", load = false })
    assert.equal(8192, luacow.evaluate(P, "cluster_size", {}))
    assert.equal("x.qcow2", luacow.evaluate(P, "name", ctx()))
    assert.is_nil(luacow.evaluate(P, "load", {}))
  end)

  it("normalizes cluster_size results", function ()
    for s, n in pairs({ ["512"] = 512, ["4K"] = 4096, ["64k"] = 65536, ["1M"] = 1048576, ["2M"] = 2097152 }) do
      assert.equal(n, luacow.evaluate(luacow.policy({ cluster_size = function () return s end }),
                                      "cluster_size", {}))
    end
    assert.equal(CLUSTER .. "1000", eval_error("cluster_size", 1000))
    assert.equal(CLUSTER .. '"1000"', eval_error("cluster_size", "1000"))
    assert.equal(CLUSTER .. "nil", eval_error("cluster_size", nil))
    assert.equal(CLUSTER .. "4194304", eval_error("cluster_size", 4194304))
  end)

  it("normalizes cow_on_read and cow_on_cache (default false)", function ()
    local P = luacow.policy({})
    assert.is_false(luacow.evaluate(P, "cow_on_read", {}))
    assert.is_false(luacow.evaluate(P, "cow_on_cache", {}))
    assert.is_true(luacow.evaluate(luacow.policy({ cow_on_read = true }), "cow_on_read", {}))
    assert.equal("/run/cor", luacow.evaluate(luacow.policy({ cow_on_read = function () return "/run/cor" end }),
                                             "cow_on_read", {}))
    assert.is_false(luacow.evaluate(luacow.policy({ cow_on_read = function () end }), "cow_on_read", {}))
    assert.is_true(luacow.evaluate(luacow.policy({ cow_on_cache = true }), "cow_on_cache", {}))
    assert.equal('cow_on_read must be false, true or a path (non-empty string), got ""', eval_error("cow_on_read", ""))
    assert.equal("cow_on_read must be false, true or a path (non-empty string), got 1", eval_error("cow_on_read", 1))
    assert.equal('cow_on_cache must be a boolean, got "yes"', eval_error("cow_on_cache", "yes"))
  end)

  it("normalizes load results", function ()
    assert.is_nil(luacow.evaluate(luacow.policy({ load = function () return false end }), "load", {}))
    assert.is_nil(luacow.evaluate(luacow.policy({ load = function () end }), "load", {}))
    assert.equal("a", luacow.evaluate(luacow.policy({ load = function () return "a" end }), "load", {}))
    assert.equal('load must be nil, false or a path (non-empty string), got ""', eval_error("load", ""))
    assert.equal("load must be nil, false or a path (non-empty string), got 1", eval_error("load", 1))
  end)

  it("normalizes events results into a new list", function ()
    local list = { "close", "interval", "close" }
    local P = luacow.policy({ events = function () return list end, interval = 5 })
    local ev = luacow.evaluate(P, "events")
    assert.same({ "close", "interval" }, ev)
    assert.not_equal(list, ev)
    assert.same({}, luacow.evaluate(luacow.policy({ events = function () end }), "events"))
    assert.equal(EVENTS .. '"exit" at index 1 ("exit" is always an event)', eval_error("events", { "exit" }))
    assert.equal(EVENTS .. '"flush"', eval_error("events", "flush"))
  end)

  it("normalizes interval results", function ()
    assert.equal(2.5, luacow.evaluate(luacow.policy({ interval = function () return 2.5 end }), "interval"))
    assert.is_nil(luacow.evaluate(luacow.policy({ interval = function () end }), "interval"))
    assert.is_nil(luacow.evaluate(luacow.policy({}), "interval"))
    assert.equal("interval must be nil or a number of seconds > 0, got 0", eval_error("interval", 0))
  end)

  it("requires an interval when dynamic events include \"interval\"", function ()
    local P = luacow.policy({ events = function () return { "interval" } end })
    assert.equal(INTERVAL_REQUIRED .. "nil", H.error_of(luacow.evaluate, P, "interval"))
    P = luacow.policy({ events = { "interval" }, interval = function () return nil end })
    assert.equal(INTERVAL_REQUIRED .. "nil", H.error_of(luacow.evaluate, P, "interval"))
    P = luacow.policy({ events = function () return { "interval" } end, interval = 3 })
    assert.equal(3, luacow.evaluate(P, "interval"))
  end)

  it("normalizes save results", function ()
    local function save (v) return luacow.evaluate(luacow.policy({ save = function () return v end }), "save", ctx()) end
    assert.is_true(save(true))
    assert.is_false(save(false))
    assert.is_false(save(nil))
    assert.equal("save must be a boolean (nil means false), got 1", eval_error("save", 1))
    assert.equal('save must be a boolean (nil means false), got "true"', eval_error("save", "true"))
  end)

  it("normalizes name results", function ()
    assert.is_nil(luacow.evaluate(luacow.policy({ name = function () return false end }), "name", ctx()))
    assert.equal("n", luacow.evaluate(luacow.policy({ name = function () return "n" end }), "name", ctx()))
    assert.equal("name must be nil or a path (non-empty string), got table", eval_error("name", {}))
  end)

  it("refuses paths with a NUL byte (the file system would cut them short)", function ()
    assert.equal('name must be nil or a path (non-empty string without NUL bytes), got "a.qcow2\\0/../x"',
                 eval_error("name", "a.qcow2\0/../x"))
    assert.equal('load must be nil, false or a path (non-empty string without NUL bytes), got "\\0"',
                 eval_error("load", "\0"))
    assert.equal('backing.file must be a path (non-empty string without NUL bytes), got "b\\0"',
                 eval_error("backing", { file = "b\0" }))
    assert.matches("^backing must be nil, a path or", eval_error("backing", "b\0"))
    assert.matches("^backing.format must be a non%-empty string", eval_error("backing", { file = "b", format = "raw\0" }))
    assert.equal('name must be nil or a path (non-empty string without NUL bytes), got "x\\0"',
                 policy_error({ name = "x\0" }))
  end)

  it("normalizes backing results", function ()
    local function backing (v) return luacow.evaluate(luacow.policy({ backing = function () return v end }), "backing", ctx()) end
    assert.is_nil(backing(nil))
    assert.is_nil(backing(false))
    assert.same({ file = "/b.img", format = "raw", embed = false }, backing("/b.img"))
    assert.same({ file = "b", format = "qcow2", embed = true }, backing({ file = "b", format = "qcow2", embed = true }))
    assert.equal("backing.embed must be a boolean, got 1", eval_error("backing", { file = "b", embed = 1 }))
  end)

  it("normalizes compress results", function ()
    local function compress (v) return luacow.evaluate(luacow.policy({ compress = function () return v end }), "compress", ctx()) end
    assert.equal("deflate", compress(true))
    assert.equal("deflate", compress("deflate"))
    assert.equal("zstd", compress("zstd"))
    assert.is_false(compress(false))
    assert.is_false(compress(nil))
    assert.equal('compress must be false, true, "deflate" or "zstd", got 9', eval_error("compress", 9))
  end)

  it("calls saved with ctx and result and ignores what it returns", function ()
    local args
    local P = luacow.policy({ saved = function (...) args = table.pack(...); return "ignored" end })
    local c, result = ctx(), { path = "out.qcow2", data_clusters = 1, zero_clusters = 0, bytes = 4096, seconds = 0.1 }
    assert.is_nil(luacow.evaluate(P, "saved", c, result))
    assert.equal(2, args.n)
    assert.equal(c, args[1])
    assert.equal(result, args[2])
    assert.is_nil(luacow.evaluate(luacow.policy({}), "saved", c, result))
    assert.equal("saved must be nil or a function, got 1", H.error_of(luacow.evaluate, { saved = 1 }, "saved"))
  end)

  it("lets errors of the policy's functions through", function ()
    local P = luacow.policy({ name = function () error("boom", 0) end })
    assert.equal("boom", H.error_of(luacow.evaluate, P, "name", ctx()))
  end)

  it("raises errors without a position", function ()
    local err = eval_error("compress", "lz4")
    assert.equal('compress must be false, true, "deflate" or "zstd", got "lz4"', err)
  end)

  it("rejects bad arguments", function ()
    assert.error_matches(function () luacow.evaluate(nil, "name") end,
                         "luacow.evaluate: policy must be a table, got nil", 1, true)
    assert.error_matches(function () luacow.evaluate({}, "nam") end,
                         'luacow.evaluate: unknown field "nam"; ' .. VALID, 1, true)
    assert.error_matches(function () luacow.evaluate({}, 1) end,
                         "luacow.evaluate: unknown field 1", 1, true)
  end)
end)

describe("the default policy", function ()
  local dir
  before_each(function () dir = H.tmpdir() end)
  after_each(function () H.rmrf(dir) end)

  it("has the documented static fields", function ()
    assert.equal(65536, luacow.default.cluster_size)
    assert.same({}, luacow.default.events)
    assert.is_nil(luacow.default.interval)
    assert.is_nil(luacow.default.backing)
    assert.is_false(luacow.default.compress)
    assert.is_nil(luacow.default.saved)
    for _, f in ipairs({ "load", "save", "name" }) do
      assert.equal("function", type(luacow.default[f]))
    end
  end)

  it("can be evaluated directly", function ()
    assert.equal(65536, luacow.evaluate(luacow.default, "cluster_size", {}))
    assert.is_true(luacow.evaluate(luacow.default, "save", ctx()))
    assert.is_false(luacow.evaluate(luacow.default, "save", ctx({ params = {} })))
  end)

  it("names the file after params.save", function ()
    local P = luacow.policy({})
    assert.equal("out.qcow2", luacow.evaluate(P, "name", ctx()))
    assert.is_nil(luacow.evaluate(P, "name", ctx({ params = {} })))
    assert.is_nil(luacow.evaluate(P, "name", ctx({ params = { save = "" } })))
  end)

  it("reloads params.load when that file exists, relative to disk.cwd", function ()
    local P = luacow.policy({})
    H.touch(dir .. "/old.qcow2")
    local disk = { size = 1024, params = { load = "old.qcow2" }, cwd = dir, script = "/p.lua" }
    assert.equal("old.qcow2", luacow.evaluate(P, "load", disk))
    disk.params.load = dir .. "/old.qcow2"
    disk.cwd = "/nonexistent"
    assert.equal(dir .. "/old.qcow2", luacow.evaluate(P, "load", disk))
    disk.params.load = "missing.qcow2"
    disk.cwd = dir
    assert.is_nil(luacow.evaluate(P, "load", disk))
    assert.is_nil(luacow.evaluate(P, "load", { params = {}, cwd = dir }))
    assert.is_nil(luacow.evaluate(P, "load", { params = { load = "" }, cwd = dir }))
  end)

  it("saves at exit when dirty and a name is known", function ()
    local P = luacow.policy({})
    local function save (over) return luacow.evaluate(P, "save", ctx(over)) end
    assert.is_true(save({}))
    assert.is_true(save({ dirty_bytes = 0, zero_bytes = 512 }))
    assert.is_false(save({ dirty_bytes = 0, zero_bytes = 0 }))
    assert.is_false(save({ event = "flush" }))
    assert.is_false(save({ event = "close" }))
    assert.is_false(save({ event = "interval" }))
    assert.is_false(save({ params = {} }))
  end)

  it("asks the merged policy's own name whether a name is known", function ()
    local P = luacow.policy({ name = function (c) return c.params.vm and c.params.vm .. ".qcow2" end })
    assert.is_false(luacow.evaluate(P, "save", ctx()))
    assert.is_true(luacow.evaluate(P, "save", ctx({ params = { vm = "web" } })))
    assert.is_true(luacow.evaluate(luacow.policy({ name = "fixed.qcow2" }), "save", ctx({ params = {} })))
    assert.is_false(luacow.evaluate(luacow.policy({ name = false }), "save", ctx()))
  end)
end)

describe("luacow.size", function ()
  it("converts byte counts", function ()
    assert.equal(512, luacow.size("512"))
    assert.equal(4096, luacow.size("4K"))
    assert.equal(4096, luacow.size("4k"))
    assert.equal(65536, luacow.size("64K"))
    assert.equal(1048576, luacow.size("1M"))
    assert.equal(2097152, luacow.size("2m"))
    assert.equal(1 << 30, luacow.size("1G"))
    assert.equal(1 << 40, luacow.size("1T"))
    assert.equal(65536, luacow.size(" 64 K "))
    assert.equal(0, luacow.size("0"))
    assert.equal(65536, luacow.size(65536))
    assert.equal(0, luacow.size(0))
    assert.equal("integer", math.type(luacow.size(4096.0)))
  end)

  it("rejects anything else", function ()
    for _, bad in ipairs({ "64Q", "", "K", "1.5M", "-1", "0x10", "64KB", "1 2" }) do
      assert.error_matches(function () luacow.size(bad) end,
                           'luacow.size: expected a byte count such as 65536, "64K" or "1M", got "'
                           .. bad .. '"', 1, true)
    end
    for _, bad in ipairs({ -1, 1.5, 1 / 0, true }) do
      assert.error_matches(function () luacow.size(bad) end, "got " .. tostring(bad), 1, true)
    end
    assert.error_matches(function () luacow.size() end, "got nil", 1, true)
    assert.error_matches(function () luacow.size({}) end, "got table", 1, true)
    assert.error_matches(function () luacow.size("99999999999999999999") end, "luacow.size: expected", 1, true)
    assert.error_matches(function () luacow.size("16777216T") end, "luacow.size: expected", 1, true)
  end)

  it("reports the caller's position", function ()
    assert.matches("^[^:]*luacow_spec%.lua:%d+: luacow%.size: ", H.error_of(function () luacow.size("x") end))
  end)
end)

describe("luacow.expand", function ()
  local now = 1700000000 -- 2023-11-14 22:13:20 UTC

  it("fills fields, nested fields and integers", function ()
    local c = ctx({ params = { name = "vm1" }, event = "flush", now = now, n = 3.0, f = 1.5,
                    big = 2 ^ 40, b = true })
    assert.equal("vm1-flush.qcow2", luacow.expand("{params.name}-{event}.qcow2", c))
    assert.equal("3 1.5 1099511627776 4096 true", luacow.expand("{n} {f} {big} {dirty_bytes} {b}", c))
    assert.equal("a.b.c", luacow.expand("{x.y.z}", { x = { y = { z = "a.b.c" } } }))
    assert.equal("plain", luacow.expand("plain"))
    assert.equal("", luacow.expand("", {}))
  end)

  it("formats {time:FMT} from ctx.now", function ()
    local c = { now = now, params = { name = "vm" }, event = "exit" }
    assert.equal("20231114-221320", luacow.expand("{time:!%Y%m%d-%H%M%S}", c))
    assert.equal("vm-" .. os.date("%Y%m%d-%H%M%S", now) .. "-exit.qcow2",
                 luacow.expand("{params.name}-{time:%Y%m%d-%H%M%S}-{event}.qcow2", c))
    assert.equal(os.date("%Y%m%d-%H%M%S", now), luacow.expand("{time}", c))
    assert.equal("221320", luacow.expand("{time:!%H%M%S}", { now = now + 0.9 }))
    assert.matches("^%d%d%d%d%d%d%d%d$", luacow.expand("{time:%Y%m%d}", {}))
  end)

  it("escapes braces as {{ and }}", function ()
    assert.equal("{x}", luacow.expand("{{x}}", {}))
    assert.equal("a}b{c", luacow.expand("a}}b{{c", {}))
    assert.equal("{exit}", luacow.expand("{{{event}}}", { event = "exit" }))
  end)

  it("names a missing field", function ()
    assert.error_matches(function () luacow.expand("{params.name}.qcow2", { params = {} }) end,
                         'luacow.expand: {params.name} has no value (ctx.params.name is nil) in "{params.name}.qcow2"', 1, true)
    assert.error_matches(function () luacow.expand("{params.name}", {}) end,
                         "{params.name} has no value (ctx.params is nil)", 1, true)
    assert.error_matches(function () luacow.expand("{event}") end,
                         "{event} has no value (ctx.event is nil)", 1, true)
    assert.error_matches(function () luacow.expand("{event.x}", { event = "exit" }) end,
                         "{event.x}: ctx.event is a string, not a table", 1, true)
    assert.error_matches(function () luacow.expand("{params}", { params = {} }) end,
                         "{params}: ctx.params is a table, not a string or number", 1, true)
  end)

  it("reports the caller's position", function ()
    assert.matches("^[^:]*luacow_spec%.lua:%d+: luacow%.expand: ", H.error_of(function () luacow.expand("{x}", {}) end))
  end)

  it("rejects malformed templates", function ()
    assert.error_matches(function () luacow.expand("a{event", {}) end,
                         "luacow.expand: unclosed '{' at position 2 in \"a{event\"", 1, true)
    assert.error_matches(function () luacow.expand("a}b", {}) end,
                         "luacow.expand: unmatched '}' at position 2 in \"a}b\" (write }} for a brace)", 1, true)
    for _, bad in ipairs({ "{}", "{a b}", "{1x}", "{a..b}", "{.a}", "{a.}", "{-}" }) do
      assert.error_matches(function () luacow.expand(bad, { a = { b = 1 } }) end,
                           "luacow.expand: bad placeholder " .. bad
                           .. ": expected {name}, {a.b.c}, {export}, {time} or {time:FORMAT}", 1, true)
    end
  end)

  it("rejects bad time formats and times", function ()
    assert.error_matches(function () luacow.expand("{time:%Q}", { now = now }) end,
                         "luacow.expand: {time:%Q}: bad time format \"%Q\" (invalid conversion specifier '%Q')", 1, true)
    assert.error_matches(function () luacow.expand("{time:*t}", { now = now }) end,
                         '{time:*t}: bad time format "*t"', 1, true)
    assert.error_matches(function () luacow.expand("{time:}", { now = now }) end,
                         "{time:} needs a format, such as {time:%Y%m%d}", 1, true)
    assert.error_matches(function () luacow.expand("{time}", { now = "today" }) end,
                         '{time}: ctx.now must be a number, got "today"', 1, true)
  end)

  it("rejects bad arguments", function ()
    assert.error_matches(function () luacow.expand(nil, {}) end,
                         "luacow.expand: template must be a string, got nil", 1, true)
    assert.error_matches(function () luacow.expand(42, {}) end,
                         "luacow.expand: template must be a string, got 42", 1, true)
    assert.error_matches(function () luacow.expand("x", "ctx") end,
                         'luacow.expand: ctx must be a table, got "ctx"', 1, true)
  end)
end)

describe("luacow.resolve and luacow.exists", function ()
  it("resolves relative paths against a directory", function ()
    assert.equal("/srv/a.qcow2", luacow.resolve("a.qcow2", "/srv"))
    assert.equal("/srv/a.qcow2", luacow.resolve("a.qcow2", "/srv/"))
    assert.equal("/abs/a.qcow2", luacow.resolve("/abs/a.qcow2", "/srv"))
    assert.equal("a.qcow2", luacow.resolve("a.qcow2"))
    assert.equal("a.qcow2", luacow.resolve("a.qcow2", ""))
    assert.error_matches(function () luacow.resolve("", "/") end,
                         'luacow.resolve: path must be a non-empty string, got ""', 1, true)
    assert.error_matches(function () luacow.resolve("a", 1) end,
                         "luacow.resolve: dir must be nil or a string, got 1", 1, true)
  end)

  it("tells whether a file exists", function ()
    local dir = H.tmpdir()
    H.touch(dir .. "/f")
    assert.is_true(luacow.exists(dir .. "/f"))
    assert.is_false(luacow.exists(dir .. "/g"))
    H.rmrf(dir)
    assert.error_matches(function () luacow.exists(nil) end,
                         "luacow.exists: path must be a non-empty string, got nil", 1, true)
  end)
end)

describe("luacow.core", function ()
  local core, dir
  setup(function () core = H.core() end)
  teardown(function () H.cleanup() end)
  before_each(function () dir = H.tmpdir() end)
  after_each(function () H.rmrf(dir) end)

  it("is the module under test", function ()
    assert.equal(core, require "luacow.core")
    if H.installed and H.installed ~= "1" then
      assert.equal(H.installed .. "/lib/lua/5.4/luacow/core.so", H.origin("luacow.core", true))
    elseif not H.installed then
      assert.is_string(H.core_so)
    end
  end)

  it("globs, sorted by name", function ()
    for _, n in ipairs({ "c.qcow2", "a.qcow2", "b.qcow2", "a.raw" }) do H.touch(dir .. "/" .. n) end
    assert.same({ dir .. "/a.qcow2", dir .. "/b.qcow2", dir .. "/c.qcow2" }, core.glob(dir .. "/*.qcow2"))
    assert.same({}, core.glob(dir .. "/*.vmdk"))
    assert.same({}, core.glob("/nonexistent-luacow/*"))
    assert.error_matches(function () core.glob() end, "string expected, got no value", 1, true)
  end)

  it("reads modification times with their fraction, and the kind of file", function ()
    H.touch(dir .. "/f", 1700000000.25)
    H.mkdir(dir .. "/d")
    local t, kind = core.mtime(dir .. "/f")
    assert.near(1700000000.25, t, 1e-3)
    assert.equal("file", kind)
    assert.equal("directory", select(2, core.mtime(dir .. "/d")))
    local none, msg, errno = core.mtime(dir .. "/missing")
    assert.is_nil(none)
    assert.equal(dir .. "/missing: No such file or directory", msg)
    assert.equal(2, errno)
    assert.error_matches(function () core.mtime({}) end, "string expected, got table", 1, true)
  end)

  it("refuses a path with a NUL byte instead of cutting it short", function ()
    H.touch(dir .. "/f")
    assert.error_matches(function () core.mtime(dir .. "/f\0/x") end, "path contains a NUL byte", 1, true)
    assert.error_matches(function () core.glob(dir .. "/*\0/x") end, "path contains a NUL byte", 1, true)
  end)
end)

describe("luacow.latest and luacow.keep", function ()
  local dir
  setup(function () H.core() end)
  teardown(function () H.cleanup() end)
  before_each(function () dir = H.tmpdir() end)
  after_each(function () H.rmrf(dir) end)

  -- name -> mtime
  local function files (t)
    for name, mtime in pairs(t) do H.touch(dir .. "/" .. name, mtime) end
  end

  it("finds the newest file by mtime, not by name", function ()
    files({ ["a.qcow2"] = 1700000300, ["b.qcow2"] = 1700000100, ["c.qcow2"] = 1700000200, ["z.raw"] = 1700000900 })
    assert.equal(dir .. "/a.qcow2", luacow.latest(dir .. "/*.qcow2"))
  end)

  it("breaks ties by name, the greater name winning", function ()
    files({ ["o-20240101.qcow2"] = 1700000000, ["o-20240102.qcow2"] = 1700000000, ["o-20231231.qcow2"] = 1700000000 })
    assert.equal(dir .. "/o-20240102.qcow2", luacow.latest(dir .. "/o-*.qcow2"))
  end)

  it("ignores directories", function ()
    files({ ["a.qcow2"] = 1700000000 })
    H.mkdir(dir .. "/newer.qcow2", 1700009999)
    assert.equal(dir .. "/a.qcow2", luacow.latest(dir .. "/*.qcow2"))
  end)

  it("returns nil when nothing matches", function ()
    assert.is_nil(luacow.latest(dir .. "/*.qcow2"))
    assert.is_nil(luacow.latest("/nonexistent-luacow/*.qcow2"))
  end)

  it("keeps the newest n and returns the deleted paths, newest first", function ()
    files({ ["1.qcow2"] = 1700000001, ["2.qcow2"] = 1700000002, ["3.qcow2"] = 1700000003,
            ["4.qcow2"] = 1700000004, ["keep.raw"] = 1 })
    assert.same({ dir .. "/2.qcow2", dir .. "/1.qcow2" }, luacow.keep(dir .. "/*.qcow2", 2))
    assert.same({ dir .. "/3.qcow2", dir .. "/4.qcow2" }, H.core().glob(dir .. "/*.qcow2"))
    assert.is_true(H.exists(dir .. "/keep.raw"))
    assert.same({}, luacow.keep(dir .. "/*.qcow2", 2))
    assert.same({}, luacow.keep(dir .. "/*.qcow2", 10))
    assert.same({ dir .. "/4.qcow2", dir .. "/3.qcow2" }, luacow.keep(dir .. "/*.qcow2", 0))
    assert.same({}, H.core().glob(dir .. "/*.qcow2"))
    assert.same({}, luacow.keep(dir .. "/nothing-*", 0))
  end)

  it("accepts an integral float for n", function ()
    files({ ["1.q"] = 1700000001, ["2.q"] = 1700000002 })
    assert.same({ dir .. "/1.q" }, luacow.keep(dir .. "/*.q", 1.0))
  end)

  it("never deletes directories", function ()
    files({ ["1.q"] = 1700000001 })
    H.mkdir(dir .. "/d.q", 1)
    assert.same({ dir .. "/1.q" }, luacow.keep(dir .. "/*.q", 0))
    assert.is_true(H.exists(dir .. "/d.q"))
  end)

  it("rejects a bad n", function ()
    for _, bad in ipairs({ -1, 1.5, "2", true, 1 / 0 }) do
      assert.error_matches(function () luacow.keep(dir .. "/*", bad) end,
                           "luacow.keep: n must be an integer >= 0, got " .. (type(bad) == "string" and '"2"' or tostring(bad)), 1, true)
    end
    assert.error_matches(function () luacow.keep(dir .. "/*") end,
                         "luacow.keep: n must be an integer >= 0, got nil", 1, true)
  end)

  it("rejects a bad pattern", function ()
    assert.error_matches(function () luacow.latest("") end,
                         'luacow.latest: pattern must be a non-empty string, got ""', 1, true)
    assert.error_matches(function () luacow.latest(nil) end,
                         "luacow.latest: pattern must be a non-empty string, got nil", 1, true)
    assert.error_matches(function () luacow.keep(42, 1) end,
                         "luacow.keep: pattern must be a non-empty string, got 42", 1, true)
  end)

  it("reports the caller's position", function ()
    assert.matches("^[^:]*luacow_spec%.lua:%d+: luacow%.latest: ", H.error_of(function () luacow.latest("") end))
    assert.matches("^[^:]*luacow_spec%.lua:%d+: luacow%.keep: ", H.error_of(function () luacow.keep("x", -1) end))
    assert.matches("^[^:]*luacow_spec%.lua:%d+: luacow%.keep: ", H.error_of(function () luacow.keep("", 1) end))
  end)

  describe("with a replaced file system", function ()
    local saved_core, saved_preload, saved_remove
    before_each(function ()
      saved_core, saved_preload, saved_remove =
        package.loaded["luacow.core"], package.preload["luacow.core"], os.remove
    end)
    after_each(function ()
      package.loaded["luacow.core"], package.preload["luacow.core"], os.remove =
        saved_core, saved_preload, saved_remove
    end)

    it("says so when the C module is missing", function ()
      package.loaded["luacow.core"] = nil
      package.preload["luacow.core"] = function () error("no luacow.core here", 0) end
      assert.error_matches(function () luacow.latest("*") end,
                           "luacow.latest needs the C module luacow.core, which failed to load: no luacow.core here", 1, true)
      assert.error_matches(function () luacow.keep("*", 1) end,
                           "luacow.keep needs the C module luacow.core", 1, true)
    end)

    it("passes glob errors on", function ()
      package.loaded["luacow.core"] = { glob = function () return nil, "glob /x/*: read error" end,
                                        mtime = function () return 0, "file" end }
      assert.error_matches(function () luacow.latest("/x/*") end, "luacow.latest: glob /x/*: read error", 1, true)
      assert.error_matches(function () luacow.keep("/x/*", 0) end, "luacow.keep: glob /x/*: read error", 1, true)
    end)

    it("skips files that vanish between glob and mtime", function ()
      package.loaded["luacow.core"] = {
        glob = function () return { "/x/a", "/x/b" } end,
        mtime = function (p) if p == "/x/b" then return nil, "gone" end return 5, "file" end,
      }
      assert.equal("/x/a", luacow.latest("/x/*"))
    end)

    it("fails when a file cannot be removed, after removing the ones before it", function ()
      files({ ["1.q"] = 1700000001, ["2.q"] = 1700000002, ["3.q"] = 1700000003 })
      local tried = {}
      os.remove = function (p)
        tried[#tried + 1] = p
        if p:match("1%.q$") then return nil, p .. ": Permission denied", 13 end
        return saved_remove(p)
      end
      assert.error_matches(function () luacow.keep(dir .. "/*.q", 1) end,
                           "luacow.keep: cannot remove " .. dir .. "/1.q: Permission denied", 1, true)
      assert.same({ dir .. "/2.q", dir .. "/1.q" }, tried)
      assert.is_false(H.exists(dir .. "/2.q"))
    end)
  end)
end)

describe("luacow.log", function ()
  local saved_host, saved_stderr
  before_each(function () saved_host, saved_stderr = package.loaded["luacow.host"], io.stderr end)
  after_each(function () package.loaded["luacow.host"], io.stderr = saved_host, saved_stderr end)

  it("goes to the host's log inside nbdkit", function ()
    local got = {}
    package.loaded["luacow.host"] = { log = function (msg) got[#got + 1] = msg end }
    luacow.log("saved", 42, nil, true, 1.5)
    luacow.log()
    assert.same({ "saved 42 nil true 1.5", "" }, got)
  end)

  it("goes to stderr elsewhere", function ()
    package.loaded["luacow.host"] = nil
    local out = {}
    io.stderr = { write = function (_, ...) for _, s in ipairs({ ... }) do out[#out + 1] = s end end }
    luacow.log("hello", "world", 3)
    assert.equal("luacow: hello world 3\n", table.concat(out))
  end)
end)

describe("luacow.describe", function ()
  it("renders values on one line, tables one level deep", function ()
    assert.equal('"a\\nb"', luacow.describe("a\nb"))
    assert.equal("65536", luacow.describe(65536))
    assert.equal("0.5", luacow.describe(0.5))
    assert.equal("true", luacow.describe(true))
    assert.equal("nil", luacow.describe(nil))
    assert.equal("function", luacow.describe(print))
    assert.equal('{"flush", "close"}', luacow.describe({ "flush", "close" }))
    assert.equal('{t={...}}', luacow.describe({ t = {} }))
    local big = {}
    for i = 1, 20 do big[i] = i end
    assert.equal("{1, 2, 3, 4, 5, 6, 7, 8, ...}", luacow.describe(big))
  end)

  it("calls no metamethod and no function a policy can replace", function ()
    local t = setmetatable({ file = "f" }, {
      __index = function () error("index") end, __pairs = function () error("pairs") end,
      __tostring = function () error("tostring") end,
    })
    local format, tostr = string.format, tostring
    string.format = function () error("format") end
    tostring = function () error("tostring") end
    local ok, s = pcall(luacow.describe, t)
    string.format, tostring = format, tostr
    assert.is_true(ok, s)
    assert.equal('{file="f"}', s)
  end)
end)
