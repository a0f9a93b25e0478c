-- Spec for lua/examples/compress.lua: zstd above a threshold on the size
-- of the data a save would write (data_clusters * cluster_size).
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*)/") or ".") .. "/helper.lua")
local luacow = require "luacow"

describe("examples/compress.lua", function ()
  local P
  local GiB = 1 << 30
  -- `bytes` of data to save (cluster_size 1, so data_clusters is a byte count).
  local function compress (bytes, params)
    return luacow.evaluate(P, "compress", { params = params or {}, event = "exit",
                                            cluster_size = 1, data_clusters = bytes,
                                            dirty_bytes = 0, zero_bytes = 0, now = 1700000000 })
  end

  before_each(function () P = luacow.policy(H.example("compress")) end)

  it("writes up to 1 GiB uncompressed", function ()
    assert.is_false(compress(0))
    assert.is_false(compress(GiB))
  end)

  it("uses zstd above 1 GiB", function ()
    assert.equal("zstd", compress(GiB + 1))
    assert.equal("zstd", compress(8 * GiB))
  end)

  it("takes the threshold from params.compress_over", function ()
    assert.is_false(compress(256 << 20, { compress_over = "256M" }))
    assert.equal("zstd", compress((256 << 20) + 1, { compress_over = "256M" }))
    assert.equal("zstd", compress(4097, { compress_over = "4096" }))
  end)

  it("fails clearly on a bad threshold", function ()
    assert.error_matches(function () compress(1, { compress_over = "lots" }) end,
                         'luacow.size: expected a byte count such as 65536, "64K" or "1M", got "lots"', 1, true)
  end)
end)
