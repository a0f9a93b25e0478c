-- Test policy of tests/e2e/policy_hooks.sh.
-- 4K clusters for small disks, "64K" (a string) for big ones; records disk.size.
return {
  cluster_size = function (disk)
    local f = assert(io.open(disk.params.out, "w"))
    f:write(disk.size, "\n")
    f:close()
    if disk.size >= 8 * 1024 * 1024 then return "64K" end
    return 4096
  end,
}
