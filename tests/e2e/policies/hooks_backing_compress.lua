-- Test policy of tests/e2e/policy_hooks.sh.
return {
  -- a relative base, resolved like name
  backing = function (ctx)
    if ctx.params.embed == "yes" then return { file = "base.raw", embed = true } end
    return "base.raw"
  end,
  compress = function (ctx)
    if ctx.dirty_bytes > 1024 * 1024 then return "zstd" end
    return false
  end,
}
