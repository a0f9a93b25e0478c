-- Spec for lua/examples/checkpoint.lua: save on flush at most every N
-- seconds, always at exit when dirty.
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*)/") or ".") .. "/helper.lua")
local luacow = require "luacow"

describe("examples/checkpoint.lua", function ()
  local P
  local START = 1700000000

  local function ctx (over)
    local c = { size = 1 << 30, cluster_size = 65536, params = {}, cwd = "/nonexistent", script = "/p.lua",
                event = "flush", dirty_bytes = 4096, zero_bytes = 0, written_bytes = 4096,
                data_clusters = 1, zero_clusters = 0, started = START, now = START + 10 }
    for k, v in pairs(over or {}) do c[k] = v end
    return c
  end
  local function save (over) return luacow.evaluate(P, "save", ctx(over)) end

  before_each(function () P = luacow.policy(H.example("checkpoint")) end)

  it("asks for flush events", function ()
    assert.same({ "flush" }, luacow.evaluate(P, "events"))
    assert.is_nil(luacow.evaluate(P, "interval"))
  end)

  it("does not save on a flush less than 30 s after the start", function ()
    assert.is_false(save({ now = START + 29 }))
    assert.is_true(save({ now = START + 30 }))
  end)

  it("waits 30 s after the last save", function ()
    assert.is_false(save({ now = START + 100, last_save = { path = "checkpoint.qcow2", time = START + 80 } }))
    assert.is_true(save({ now = START + 110, last_save = { path = "checkpoint.qcow2", time = START + 80 } }))
  end)

  it("takes the period from params.every", function ()
    assert.is_true(save({ now = START + 5, params = { every = "5" } }))
    assert.is_false(save({ now = START + 4, params = { every = "5" } }))
  end)

  it("skips saves when nothing changed", function ()
    assert.is_false(save({ now = START + 1000, dirty_bytes = 0 }))
    assert.is_true(save({ now = START + 1000, dirty_bytes = 0, zero_bytes = 512 }))
    assert.is_false(save({ event = "exit", dirty_bytes = 0 }))
  end)

  it("always saves at exit when dirty", function ()
    assert.is_true(save({ event = "exit", now = START + 1 }))
    assert.is_true(save({ event = "exit", last_save = { path = "c", time = START + 9 } }))
  end)

  it("ignores other events", function ()
    assert.is_false(save({ event = "close", now = START + 1000 }))
  end)

  it("saves to params.save or checkpoint.qcow2 and reloads it", function ()
    assert.equal("checkpoint.qcow2", luacow.evaluate(P, "name", ctx()))
    assert.equal("vm.qcow2", luacow.evaluate(P, "name", ctx({ params = { save = "vm.qcow2" } })))
    local dir = H.tmpdir()
    local disk = { size = 1 << 30, params = {}, cwd = dir, script = "/p.lua" }
    assert.is_nil(luacow.evaluate(P, "load", disk))
    H.touch(dir .. "/checkpoint.qcow2")
    assert.equal("checkpoint.qcow2", luacow.evaluate(P, "load", disk))
    H.rmrf(dir)
  end)

  it("takes {export} in params.save, so that each export has its own checkpoint", function ()
    assert.equal("cp-disk2.qcow2",
                 luacow.evaluate(P, "name", ctx({ params = { save = "cp-{export}.qcow2" }, export = "disk2" })))
    assert.equal("cp-%.qcow2",
                 luacow.evaluate(P, "name", ctx({ params = { save = "cp-{export}.qcow2" }, export = "" })))
  end)
end)
