-- Spec for lua/examples/backing.lua: record params.base in the qcow2 header.
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*)/") or ".") .. "/helper.lua")
local luacow = require "luacow"

describe("examples/backing.lua", function ()
  local P
  local function backing (params)
    return luacow.evaluate(P, "backing", { params = params, event = "exit", dirty_bytes = 1, zero_bytes = 0,
                                           cwd = "/", now = 1700000000 })
  end

  before_each(function () P = luacow.policy(H.example("backing")) end)

  it("records nothing without params.base", function ()
    assert.is_nil(backing({}))
    assert.is_nil(backing({ base = "" }))
  end)

  it("embeds params.base, raw by default", function ()
    assert.same({ file = "/images/base.img", format = "raw", embed = true }, backing({ base = "/images/base.img" }))
  end)

  it("takes the format from params.base_format", function ()
    assert.same({ file = "base.qcow2", format = "qcow2", embed = true },
                backing({ base = "base.qcow2", base_format = "qcow2" }))
  end)

  it("leaves the other fields at their defaults", function ()
    assert.equal("out.qcow2", luacow.evaluate(P, "name", { params = { save = "out.qcow2" } }))
    assert.is_false(luacow.evaluate(P, "compress", {}))
  end)
end)
