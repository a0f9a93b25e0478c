-- Turns a Lua source file into a C header holding it as a byte array, so
-- the filter carries its own copy of the luacow library.
-- usage: lua5.4 tools/embed.lua NAME FILE > NAME.h
local name, path = arg[1], arg[2]
local f = assert(io.open(path, "rb"))
local src = f:read("a")
f:close()
local out = { "/* Generated from " .. path .. " by tools/embed.lua: do not edit. */",
              "static const unsigned char " .. name .. "[] = {" }
for i = 1, #src, 16 do
  local row = {}
  for j = i, math.min(i + 15, #src) do row[#row + 1] = string.format("0x%02x,", src:byte(j)) end
  out[#out + 1] = "  " .. table.concat(row)
end
out[#out + 1] = "};"
out[#out + 1] = "static const size_t " .. name .. "_len = " .. #src .. ";"
io.write(table.concat(out, "\n"), "\n")
