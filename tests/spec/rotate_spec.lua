-- Spec for lua/examples/rotate.lua: timestamped saves, keep the newest N,
-- reload the newest.  It touches real files in a temporary directory.
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*)/") or ".") .. "/helper.lua")
local luacow = require "luacow"

describe("examples/rotate.lua", function ()
  local P, dir, logged, saved_host
  local NOW = 1700000000

  local function ctx (over)
    local c = { size = 1 << 30, cluster_size = 65536, params = {}, cwd = dir, script = dir .. "/rotate.lua",
                event = "exit", dirty_bytes = 4096, zero_bytes = 0, written_bytes = 4096,
                data_clusters = 1, zero_clusters = 0, started = NOW - 60, now = NOW }
    for k, v in pairs(over or {}) do c[k] = v end
    return c
  end

  -- n overlays from an earlier run, one a minute, the last one the newest.
  local function old_overlays (n, sub)
    local paths = {}
    for i = 1, n do
      local t = NOW - (n - i + 1) * 60
      paths[i] = (sub or dir) .. "/overlay-" .. os.date("%Y%m%d-%H%M%S", t) .. "-exit.qcow2"
      H.touch(paths[i], t)
    end
    return paths
  end

  setup(function () H.core() end)
  teardown(function () H.cleanup() end)
  before_each(function ()
    dir = H.tmpdir()
    P = luacow.policy(H.example("rotate"))
    -- capture luacow.log as the filter would
    saved_host, logged = package.loaded["luacow.host"], {}
    package.loaded["luacow.host"] = { log = function (msg) logged[#logged + 1] = msg end }
  end)
  after_each(function ()
    package.loaded["luacow.host"] = saved_host
    H.rmrf(dir)
  end)

  it("names each save after the time and the event", function ()
    local stamp = os.date("%Y%m%d-%H%M%S", NOW)
    assert.equal(dir .. "/overlay-" .. stamp .. "-exit.qcow2", luacow.evaluate(P, "name", ctx()))
    assert.equal(dir .. "/overlays/overlay-" .. stamp .. "-exit.qcow2",
                 luacow.evaluate(P, "name", ctx({ params = { dir = "overlays" } })))
    assert.equal("/srv/vm/overlay-" .. stamp .. "-exit.qcow2",
                 luacow.evaluate(P, "name", ctx({ params = { dir = "/srv/vm" } })))
  end)

  it("reloads the newest overlay, or nothing", function ()
    assert.is_nil(luacow.evaluate(P, "load", ctx()))
    local paths = old_overlays(3)
    assert.equal(paths[3], luacow.evaluate(P, "load", ctx()))
    H.mkdir(dir .. "/sub")
    local sub = old_overlays(2, dir .. "/sub")
    assert.equal(sub[2], luacow.evaluate(P, "load", ctx({ params = { dir = "sub" } })))
  end)

  it("keeps the newest 5 by default after a save", function ()
    local paths = old_overlays(7)
    luacow.evaluate(P, "saved", ctx(), { path = paths[7], data_clusters = 1, zero_clusters = 0, bytes = 4096, seconds = 0.01 })
    for i = 1, 2 do assert.is_false(H.exists(paths[i])) end
    for i = 3, 7 do assert.is_true(H.exists(paths[i])) end
    assert.equal(2, #logged)
    assert.matches("^rotate: removed " .. dir:gsub("%p", "%%%0") .. "/overlay%-.*%(kept the newest 5", logged[1])
  end)

  it("keeps params.keep of them", function ()
    local paths = old_overlays(4)
    luacow.evaluate(P, "saved", ctx({ params = { keep = "1" } }), { path = paths[4] })
    assert.same({ paths[4] }, H.core().glob(dir .. "/overlay-*.qcow2"))
    assert.equal(3, #logged)
  end)

  it("gives each export files of its own: load and keep never touch another's", function ()
    local stamp = os.date("%Y%m%d-%H%M%S", NOW)
    assert.equal(dir .. "/export-disk2@" .. stamp .. "-exit.qcow2",
                 luacow.evaluate(P, "name", ctx({ export = "disk2" })))
    -- "overlay-x" would match the default export's pattern if the names
    -- were not kept apart; "A/b" must come out escaped.
    assert.equal(dir .. "/export-overlay-x@" .. stamp .. "-exit.qcow2",
                 luacow.evaluate(P, "name", ctx({ export = "overlay-x" })))
    assert.equal(dir .. "/export-%41%2fb@" .. stamp .. "-exit.qcow2",
                 luacow.evaluate(P, "name", ctx({ export = "A/b" })))
    local default = old_overlays(3)
    local others = {}
    for i, e in ipairs({ "disk2", "disk2-x", "overlay-x" }) do
      others[e] = dir .. "/export-" .. e .. "@" .. os.date("%Y%m%d-%H%M%S", NOW - 600 + i) .. "-exit.qcow2"
      H.touch(others[e], NOW - 600 + i)
    end
    assert.equal(default[3], luacow.evaluate(P, "load", ctx()))
    assert.equal(default[3], luacow.evaluate(P, "load", ctx({ export = "" })))
    assert.equal(others["disk2"], luacow.evaluate(P, "load", ctx({ export = "disk2" })))
    assert.equal(others["overlay-x"], luacow.evaluate(P, "load", ctx({ export = "overlay-x" })))
    assert.is_nil(luacow.evaluate(P, "load", ctx({ export = "disk" })))
    -- keep=1 for export disk2 deletes nothing of the others
    local newer = dir .. "/export-disk2@" .. stamp .. "-exit.qcow2"
    H.touch(newer, NOW)
    luacow.evaluate(P, "saved", ctx({ export = "disk2", params = { keep = "1" } }), { path = newer })
    assert.is_false(H.exists(others["disk2"]))
    assert.is_true(H.exists(newer))
    assert.is_true(H.exists(others["disk2-x"]) and H.exists(others["overlay-x"]))
    for i = 1, 3 do assert.is_true(H.exists(default[i])) end
    -- and keep=1 for the default export deletes none of the named ones
    luacow.evaluate(P, "saved", ctx({ params = { keep = "1" } }), { path = default[3] })
    assert.is_false(H.exists(default[1]) or H.exists(default[2]))
    assert.is_true(H.exists(newer) and H.exists(others["disk2-x"]) and H.exists(others["overlay-x"]))
  end)

  it("matches only its own directory, even one whose name has glob characters", function ()
    for _, name in ipairs({ "vm[1]", "v*", "v?1", "back\\slash" }) do
      H.mkdir(dir .. "/vm1")
      local theirs = old_overlays(2, dir .. "/vm1")
      H.mkdir(dir .. "/" .. name)
      assert.is_nil(luacow.evaluate(P, "load", ctx({ params = { dir = name } })), name)
      local ours = old_overlays(2, dir .. "/" .. name)
      assert.equal(ours[2], luacow.evaluate(P, "load", ctx({ params = { dir = name } })), name)
      luacow.evaluate(P, "saved", ctx({ params = { dir = name, keep = "0" } }), { path = ours[2] })
      assert.is_false(H.exists(ours[1]) or H.exists(ours[2]), name)
      assert.is_true(H.exists(theirs[1]) and H.exists(theirs[2]), name)
      H.rmrf(dir)
      dir = H.tmpdir()
    end
  end)

  it("fails clearly on a bad params.keep", function ()
    old_overlays(2)
    assert.error_matches(function () luacow.evaluate(P, "saved", ctx({ params = { keep = "1.5" } }), { path = "x" }) end,
                         "luacow.keep: n must be an integer >= 0, got 1.5", 1, true)
  end)
end)
