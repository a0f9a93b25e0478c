-- How to test a policy: load the script, merge it with luacow.policy, and
-- evaluate fields against fake disk/ctx tables.  Here: lua/examples/fixed.lua.
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*)/") or ".") .. "/helper.lua")
local luacow = require "luacow"

describe("examples/fixed.lua", function ()
  local P, dir

  -- A fake ctx: what the filter passes when it considers saving.
  local function ctx (over)
    local c = { size = 1 << 30, cluster_size = 65536, params = {}, cwd = dir, script = dir .. "/fixed.lua",
                event = "exit", dirty_bytes = 65536, zero_bytes = 0, written_bytes = 65536,
                data_clusters = 1, zero_clusters = 0, started = 1700000000, now = 1700000600 }
    for k, v in pairs(over or {}) do c[k] = v end
    return c
  end

  before_each(function ()
    dir = H.tmpdir()
    P = luacow.policy(H.example("fixed"))
  end)
  after_each(function () H.rmrf(dir) end)

  it("is a valid policy that keeps the other defaults", function ()
    assert.equal(65536, luacow.evaluate(P, "cluster_size", ctx()))
    assert.same({}, luacow.evaluate(P, "events"))
    assert.is_false(luacow.evaluate(P, "compress", ctx()))
  end)

  it("saves to params.save, or overlay.qcow2", function ()
    assert.equal("vm.qcow2", luacow.evaluate(P, "name", ctx({ params = { save = "vm.qcow2" } })))
    assert.equal("overlay.qcow2", luacow.evaluate(P, "name", ctx()))
    assert.equal("overlay.qcow2", luacow.evaluate(P, "name", ctx({ params = { save = "" } })))
  end)

  it("saves at exit when something was written", function ()
    assert.is_true(luacow.evaluate(P, "save", ctx()))
    assert.is_false(luacow.evaluate(P, "save", ctx({ dirty_bytes = 0 })))
    assert.is_false(luacow.evaluate(P, "save", ctx({ event = "flush" })))
  end)

  it("reloads the file when it exists (relative to where nbdkit started)", function ()
    local disk = { size = 1 << 30, params = {}, cwd = dir, script = dir .. "/fixed.lua" }
    assert.is_nil(luacow.evaluate(P, "load", disk))
    H.touch(dir .. "/overlay.qcow2")
    assert.equal("overlay.qcow2", luacow.evaluate(P, "load", disk))
    disk.params.save = dir .. "/vm.qcow2"
    assert.is_nil(luacow.evaluate(P, "load", disk))
    H.touch(dir .. "/vm.qcow2")
    assert.equal(dir .. "/vm.qcow2", luacow.evaluate(P, "load", disk))
  end)

  it("gives each export its own file with {export} in params.save", function ()
    local save = { save = "ov-{export}.qcow2" }
    assert.equal("ov-disk2.qcow2", luacow.evaluate(P, "name", ctx({ params = save, export = "disk2" })))
    assert.equal("ov-%41%2fb.qcow2", luacow.evaluate(P, "name", ctx({ params = save, export = "A/b" })))
    local disk = { size = 1 << 30, params = save, cwd = dir, script = dir .. "/fixed.lua", export = "disk2" }
    assert.is_nil(luacow.evaluate(P, "load", disk))
    H.touch(dir .. "/ov-disk2.qcow2")
    assert.equal("ov-disk2.qcow2", luacow.evaluate(P, "load", disk))
    disk.export = "disk3"
    assert.is_nil(luacow.evaluate(P, "load", disk))
    assert.error_matches(function () luacow.evaluate(P, "name", ctx({ params = { save = "ov-{nope}.qcow2" } })) end,
                         "{nope} has no value", 1, true)
  end)
end)
