-- luarocks make rockspec/luacow-scm-1.rockspec   (from the top of the tree)
rockspec_format = "3.0"
package = "luacow"
version = "scm-1"
-- `luarocks lint` insists on source.url; `luarocks make` builds from the
-- current directory and never fetches it.  Placeholder until there is a
-- public repository.
source = {
   url = "git+https://example.invalid/luacow.git",
}
description = {
   summary = "Policy library for the nbdkit luacow copy-on-write filter",
   detailed = [[
The luacow nbdkit filter keeps a copy-on-write overlay and saves it as
qcow2; when and where to save is a Lua policy table.  This rock installs
the policy library (luacow) and its small C helper (luacow.core: glob and
mtime) so that policies can be unit-tested with busted outside nbdkit.
]],
   license = "BSD-3-Clause", -- as nbdkit; confirm with the project
   labels = { "nbdkit", "qcow2", "policy" },
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "builtin",
   modules = {
      luacow = "lua/luacow.lua",
      ["luacow.names"] = "lua/luacow/names.lua",
      ["luacow.core"] = {
         sources = { "plugin/luacow_core.c" },
         incdirs = { "plugin" },
      },
   },
}
