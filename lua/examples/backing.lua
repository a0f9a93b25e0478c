-- backing.lua: record the base image in the saved qcow2, so that
-- `qemu-img info` and qemu itself open the overlay on top of it.
--
--   nbdkit file base.img --filter=luacow luacow-script=backing.lua \
--       luacow-save=overlay.qcow2 luacow-base=/images/base.img
--
-- luacow-base_format= defaults to "raw".  Without luacow-base= nothing is
-- recorded.  (With embed=false the filter would only log the
-- `qemu-img rebase -u` command instead of writing the header field.)
return {
  backing = function (ctx)
    local base = ctx.params.base
    if base == nil or base == "" then return nil end
    return { file = base, format = ctx.params.base_format or "raw", embed = true }
  end,
}
