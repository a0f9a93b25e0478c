-- compress.lua: zstd-compress big overlays, write small ones as they are.
--
--   nbdkit file disk.img --filter=luacow luacow-script=compress.lua \
--       luacow-save=overlay.qcow2 luacow-compress_over=256M
--
-- luacow-compress_over= is a byte count ("256M", "1G", "1048576"); the
-- default is 1 GiB.  The size that counts is what the save would write:
-- its data clusters (ctx.dirty_bytes only counts writes since the last save).
local luacow = require "luacow"

return {
  compress = function (ctx)
    local over = luacow.size(ctx.params.compress_over or "1G")
    return ctx.data_clusters * ctx.cluster_size > over and "zstd" or false
  end,
}
