-- Specs for the export-name helpers of lua/luacow.lua: sha256, safe_name,
-- {export} in expand, and the templates of the default policy.
local H = dofile((debug.getinfo(1, "S").source:match("^@(.*)/") or ".") .. "/helper.lua")
local luacow = require "luacow"

local SAFE = "^[a-z0-9._%%-]+$"

-- The inverse of a short safe form (nil when it is not one).
local function decode (f)
  if f == "%" then return "" end
  if f:find("%-", 1, true) then return nil end
  local out, i = {}, 1
  while i <= #f do
    local c = f:sub(i, i)
    if c == "%" then
      local hex = f:sub(i + 1, i + 2)
      if not hex:match("^[0-9a-f][0-9a-f]$") then return nil end
      out[#out + 1] = string.char(tonumber(hex, 16))
      i = i + 3
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return table.concat(out)
end

-- sha256sum's digest of s, through a temporary file.
local function sha256sum (dir, s)
  local path = dir .. "/in"
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  local ok, out = H.sh("sha256sum " .. H.q(path))
  assert(ok, "sha256sum failed: " .. out)
  return (assert(out:match("^(%x+)"), out))
end

local function random_bytes (n)
  local t = {}
  for i = 1, n do t[i] = string.char(math.random(0, 255)) end
  return table.concat(t)
end

-- Checks the promises of safe_name's doc on one name; returns the form.
local function checked (name)
  local f = luacow.safe_name(name)
  assert.matches(SAFE, f)
  assert.not_equal(".", f:sub(1, 1))
  assert.is_true(#f >= 1 and #f <= 80, "length " .. #f)
  if f:find("%-", 1, true) then -- long: a cut prefix and a hash of the name
    assert.is_true(#f >= 76 and #f <= 78, "length " .. #f)
    assert.equal("%-" .. luacow.sha256(name):sub(1, 16), f:sub(-18))
  else
    assert.equal(name, decode(f)) -- short: exactly the name, encoded
  end
  return f
end

describe("luacow.sha256", function ()
  it("gives the FIPS 180-4 example digests", function ()
    assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", luacow.sha256(""))
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", luacow.sha256("abc"))
    assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
                 luacow.sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))
    assert.equal("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
                 luacow.sha256(string.rep("a", 1000000)))
  end)

  it("agrees with sha256sum on random binary strings, across the padding boundaries", function ()
    local dir = H.tmpdir()
    math.randomseed(20261201)
    local lengths = { 1, 3, 54, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096 }
    for _, n in ipairs(lengths) do
      local s = random_bytes(n)
      assert.equal(sha256sum(dir, s), luacow.sha256(s), "length " .. n)
    end
    H.rmrf(dir)
  end)

  it("rejects what is not a string, at the caller's position", function ()
    assert.matches("^[^:]*names_spec%.lua:%d+: luacow%.sha256: expected a string, got 5$",
                   H.error_of(function () luacow.sha256(5) end))
    assert.error_matches(function () luacow.sha256() end, "got nil", 1, true)
  end)
end)

describe("luacow.safe_name", function ()
  it("encodes what could escape a directory or hide a file", function ()
    assert.equal("%2e.%2f..%2fetc%2fx", checked("../../etc/x"))
    assert.equal("%2ehidden", checked(".hidden"))
    assert.equal("%2e.", checked(".."))
    assert.equal("%2e", checked("."))
    assert.equal("a%2fb", checked("a/b"))
    assert.equal("a.b", checked("a.b"))
    assert.equal("%00", checked("\0"))
  end)

  it("keeps a-z, 0-9, '_', '-' and inner '.', and encodes the rest in lowercase hex", function ()
    assert.equal("disk-1_v2.img", checked("disk-1_v2.img"))
    assert.equal("%44isk%20%5a", checked("Disk Z"))
    assert.equal("%ff%80%0a%7e", checked("\xff\x80\n~"))
  end)

  it("makes the empty name a lone %, which nothing else gives", function ()
    assert.equal("%", checked(""))
    assert.equal("%25", checked("%"))
  end)

  it("keeps names apart that differ only in case, even once lowercased", function ()
    local a, b, c = checked("Disk"), checked("disk"), checked("DISK")
    assert.are_not.equal(a, b)
    assert.are_not.equal(b, c)
    assert.are_not.equal(a, c)
    assert.equal(a, a:lower())
    assert.equal(c, c:lower())
  end)

  it("keeps the Unicode normalizations of one name apart (NFC and NFD e-acute)", function ()
    local nfc, nfd = checked("\xc3\xa9"), checked("e\xcc\x81")
    assert.equal("%c3%a9", nfc)
    assert.equal("e%cc%81", nfd)
    assert.are_not.equal(nfc, nfd)
  end)

  it("does not confuse an escape-looking name with what it looks like", function ()
    assert.are_not.equal(checked("%2f"), checked("/"))
    assert.equal("%252f", luacow.safe_name("%2f"))
  end)

  it("maps every single byte to its own safe form", function ()
    local seen = {}
    for b = 0, 255 do
      local f = checked(string.char(b))
      assert.is_nil(seen[f], "bytes " .. tostring(seen[f]) .. " and " .. b)
      seen[f] = b
      assert.is_nil(f:find("[A-Z]"))
    end
  end)

  it("keeps forms of exactly 80 characters, and shortens longer ones with a hash", function ()
    local s80 = string.rep("a", 80)
    assert.equal(s80, checked(s80))
    local s81 = s80 .. "a"
    local f = checked(s81)
    assert.equal(string.rep("a", 60) .. "%-" .. luacow.sha256(s81):sub(1, 16), f)
    assert.equal(78, #f)
    -- 26 bytes encoded (78 characters) and 2 more kept: 80, still short.
    assert.equal(80, #checked(string.rep("/", 26) .. "ab"))
    assert.equal(78, #checked(string.rep("/", 26) .. "abc"))
  end)

  it("never cuts a long form inside a %xx escape", function ()
    local tail = string.rep("A", 10)
    assert.equal(string.rep("a", 59) .. "%-", luacow.safe_name(string.rep("a", 59) .. tail):sub(1, 61))
    assert.equal(string.rep("a", 58) .. "%-", luacow.safe_name(string.rep("a", 58) .. tail):sub(1, 60))
    assert.equal(string.rep("a", 57) .. "%41%-", luacow.safe_name(string.rep("a", 57) .. tail):sub(1, 62))
    for k = 50, 70 do checked(string.rep("a", k) .. tail) end
  end)

  it("gives 4 KiB names a short form, different when only their last byte differs", function ()
    local a = string.rep("x", 4095) .. "a"
    local b = string.rep("x", 4095) .. "b"
    local fa, fb = checked(a), checked(b)
    assert.are_not.equal(fa, fb)
    assert.equal(78, #fa)
    assert.equal(string.rep("x", 60) .. "%-" .. luacow.sha256(a):sub(1, 16), fa)
    local slashes = checked(string.rep("/", 4096))
    assert.equal(string.rep("%2f", 20) .. "%-" .. luacow.sha256(string.rep("/", 4096)):sub(1, 16), slashes)
  end)

  it("decodes back to the name for random short names", function ()
    math.randomseed(11)
    for _ = 1, 300 do
      local s = random_bytes(math.random(0, 26))
      assert.equal(s, decode(luacow.safe_name(s)))
    end
  end)

  it("rejects a name that is not a string, at the caller's position", function ()
    assert.matches("^[^:]*names_spec%.lua:%d+: luacow%.safe_name: name must be a string, got nil$",
                   H.error_of(function () luacow.safe_name(nil) end))
    assert.error_matches(function () luacow.safe_name(1) end, "luacow.safe_name: name must be a string, got 1",
                         1, true)
    assert.error_matches(function () luacow.safe_name({}) end, "got table", 1, true)
  end)
end)

describe("luacow.expand with {export}", function ()
  it("expands to the safe form of ctx.export", function ()
    assert.equal("ov-a%2fb.qcow2", luacow.expand("ov-{export}.qcow2", { export = "a/b" }))
    assert.equal("ov-%.qcow2", luacow.expand("ov-{export}.qcow2", { export = "" }))
    assert.equal("%2e.%2f..%2fetc%2fx", luacow.expand("{export}", { export = "../../etc/x" }))
    assert.equal("{export}", luacow.expand("{{export}}", { export = "x" }))
  end)

  it("leaves the other placeholders as they are", function ()
    assert.equal("a/B", luacow.expand("{params.x}", { params = { x = "a/B" }, export = "x" }))
  end)

  it("is an error without a string export", function ()
    assert.error_matches(function () luacow.expand("ov-{export}", {}) end,
                         'luacow.expand: {export} has no value (ctx.export is nil) in "ov-{export}"', 1, true)
    assert.error_matches(function () luacow.expand("{export}", { export = 7 }) end,
                         "luacow.expand: {export}: ctx.export must be a string, got 7", 1, true)
    assert.error_matches(function () luacow.expand("{export.x}", { export = "a" }) end,
                         "{export.x}: ctx.export is a string, not a table", 1, true)
  end)
end)

describe("the default policy's templates", function ()
  local P = luacow.policy({})
  local dir
  before_each(function () dir = H.tmpdir() end)
  after_each(function () H.rmrf(dir) end)

  local function disk (params, export)
    return { params = params, cwd = dir, export = export }
  end
  local function journal (params, export)
    return luacow.evaluate(P, "journal", disk(params, export))
  end
  local function journal_error (params, export)
    local err = H.error_of(luacow.evaluate, P, "journal", disk(params, export))
    assert.not_matches("luacow%.lua:%d+:", err) -- no position: the filter prefixes the script
    return err
  end

  it("names each export's save after luacow-save=", function ()
    local ctx = { params = { save = "ov-{export}-{event}.qcow2" }, event = "exit", export = "Disk" }
    assert.equal("ov-%44isk-exit.qcow2", luacow.evaluate(P, "name", ctx))
    ctx.export = ""
    assert.equal("ov-%-exit.qcow2", luacow.evaluate(P, "name", ctx))
    assert.equal("plain.qcow2", luacow.evaluate(P, "name", { params = { save = "plain.qcow2" } }))
    assert.equal("a{b}.qcow2", luacow.evaluate(P, "name", { params = { save = "a{{b}}.qcow2" } }))
    assert.is_true(luacow.evaluate(P, "save", { params = { save = "ov-{export}.qcow2" }, event = "exit",
                                                export = "x", dirty_bytes = 1 }))
  end)

  it("says which parameter a bad save template is", function ()
    local err = H.error_of(luacow.evaluate, P, "name", { params = { save = "ov-{vm}.qcow2" } })
    assert.equal("name: luacow-save=ov-{vm}.qcow2: {vm} has no value (ctx.vm is nil)", err)
    err = H.error_of(luacow.evaluate, P, "name", { params = { save = "a}b" } })
    assert.equal("name: luacow-save=a}b: unmatched '}' at position 2 (write }} for a brace)", err)
  end)

  it("reloads each export's own file from luacow-load=", function ()
    H.touch(dir .. "/ov-%44isk.qcow2")
    H.touch(dir .. "/ov-%.qcow2")
    local params = { load = "ov-{export}.qcow2" }
    assert.equal("ov-%44isk.qcow2", luacow.evaluate(P, "load", disk(params, "Disk")))
    assert.is_nil(luacow.evaluate(P, "load", disk(params, "disk")))
    assert.equal("ov-%.qcow2", luacow.evaluate(P, "load", disk(params, "")))
    assert.equal("load: luacow-load=ov-{export}.qcow2: {export} has no value (disk.export is nil)",
                 H.error_of(luacow.evaluate, P, "load", disk(params)))
    assert.equal("load: luacow-load={params.x} expands to an empty path",
                 H.error_of(luacow.evaluate, P, "load", disk({ load = "{params.x}", x = "" })))
  end)

  it("derives each export's journal from luacow-save=", function ()
    assert.equal("ov-%44isk.qcow2.journal", journal({ save = "ov-{export}.qcow2" }, "Disk"))
    assert.equal("ov-%.qcow2.journal", journal({ save = "ov-{export}.qcow2" }, ""))
    assert.equal("snap-{time}.qcow2.journal", journal({ save = "snap-{{time}}.qcow2" }))
    assert.equal("vm-web.qcow2.journal", journal({ save = "vm-{params.vm}.qcow2", vm = "web" }))
  end)

  it("refuses to derive a journal from a save template with {time}", function ()
    assert.equal("journal: luacow-save=snap-{time}.qcow2 cannot name the journal (it uses {time}, so every"
                 .. " start would get a new journal); set luacow-journal=PATH or luacow-journal=off",
                 journal_error({ save = "snap-{time}.qcow2" }))
    assert.matches("it uses {time:%Y%m%d}, so every start", journal_error({ save = "s-{time:%Y%m%d}" }), 1, true)
    -- Found by parsing: a literal brace before it does not hide it.
    assert.matches("it uses {time}", journal_error({ save = "{{{time}}}" }), 1, true)
  end)

  it("refuses to derive a journal from a placeholder that disk lacks", function ()
    assert.equal("journal: luacow-save=snap-{event}.qcow2 cannot name the journal (it uses {event}, and"
                 .. " disk.event is nil when the journal is opened); set luacow-journal=PATH or luacow-journal=off",
                 journal_error({ save = "snap-{event}.qcow2" }))
    assert.matches("(it uses {export}, and disk.export is nil", journal_error({ save = "{export}" }), 1, true)
    assert.equal("journal: luacow-save=a{b: unclosed '{' at position 2", journal_error({ save = "a{b" }))
  end)

  it("takes luacow-journal= as a template expanded with disk, and off for none", function ()
    assert.equal("j-%44isk", journal({ save = "snap-{time}.qcow2", journal = "j-{export}" }, "Disk"))
    assert.is_false(journal({ save = "snap-{time}.qcow2", journal = "off" }))
    assert.is_false(journal({ save = "ov-{export}.qcow2", journal = "off" }, "x"))
    assert.equal("{x}", journal({ journal = "{{x}}" }))
    assert.equal("journal: luacow-journal=j-{time} cannot name the journal (it uses {time}, so every start"
                 .. " would get a new journal)", journal_error({ journal = "j-{time}" }))
    assert.equal("journal: luacow-journal=j-{event}: {event} has no value (disk.event is nil)",
                 journal_error({ journal = "j-{event}" }))
  end)

  it("takes a static name of the policy's own literally", function ()
    local Q = luacow.policy({ name = "/srv/{vm}.qcow2" })
    assert.equal("/srv/{vm}.qcow2.journal", luacow.evaluate(Q, "journal", disk({ save = "snap-{time}" })))
    assert.equal("/srv/{vm}.qcow2", luacow.evaluate(Q, "name", { params = { save = "x-{time}" } }))
  end)
end)
