-- json.decode against RFC 8259, in the spirit of JSONTestSuite's
-- test_parsing: y_ texts must decode (to the value given), n_ texts must be
-- refused with "invalid JSON at offset N: REASON", i_ texts (which the suite
-- leaves to the implementation) get the behaviour lua_json.h documents.
-- Also: a decode's cJSON tree counts against its run's memory cap.
local core = require "chorus.core"
local json = core.json

local function same(a, b)
  if type(a) ~= type(b) then
    return false
  end
  if type(a) == "number" then
    return math.type(a) == math.type(b) and a == b
  end
  if type(a) ~= "table" then
    return a == b
  end
  for k, v in pairs(a) do
    if not same(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

local null = json.null

-- { name, text, value } : text decodes to value (integers and floats apart)
local accepted = {
  { "y_array_empty", "[]", {} },
  { "y_array_arrays_with_spaces", "[[]   ]", { {} } },
  { "y_array_heterogeneous", '[null, 1, "1", {}]', { null, 1, "1", {} } },
  { "y_array_with_leading_space", " [1]", { 1 } },
  { "y_array_with_trailing_space", "[2] ", { 2 } },
  { "y_array_with_several_null", "[1,null,null,null,2]", { 1, null, null, null, 2 } },
  { "y_object_empty", "{}", {} },
  { "y_object_empty_key", '{"":0}', { [""] = 0 } },
  { "y_object_duplicated_key", '{"a":"b","a":"c"}', { a = "c" } },
  { "y_object_escaped_null_in_key", '{"foo\\u0000bar": 42}', { ["foo\0bar"] = 42 } },
  { "y_object_long_strings", '{"x":[{"id": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}], "id": "y"}',
    { x = { { id = ("x"):rep(40) } }, id = "y" } },
  { "y_structure_whitespace_array", " \t\r\n[ \t\r\n1 \t\r\n, \t\r\n2 \t\r\n] \t\r\n", { 1, 2 } },
  { "y_structure_lonely_true", "true", true },
  { "y_structure_lonely_false", "false", false },
  { "y_structure_lonely_null", "null", null },
  { "y_structure_lonely_int", "42", 42 },
  { "y_structure_lonely_string", '"asd"', "asd" },
  { "y_number_0e+1", "[0e+1]", { 0 } },
  { "y_number_0e1", "[0e1]", { 0 } },
  { "y_number_negative_zero", "[-0]", { 0 } },
  { "y_number_negative_one", "[-1]", { -1 } },
  { "y_number_real_capital_e", "[1E22]", { 1e22 } },
  { "y_number_real_capital_e_neg_exp", "[1E-2]", { 0.01 } },
  { "y_number_real_capital_e_pos_exp", "[1E+2]", { 100 } },
  { "y_number_real_fraction_exponent", "[123.456e78]", { 123.456e78 } },
  { "y_number_real_neg_exp", "[1e-2]", { 0.01 } },
  { "y_number_simple_real", "[-0.5]", { -0.5 } },
  { "y_number_double_close_to_zero", "[-0." .. ("0"):rep(77) .. "1]", { -1e-78 } },
  { "y_number_int64_exact", "[9007199254740993, -9007199254740993]", { 9007199254740993, -9007199254740993 } },
  { "y_number_int64_max", "9223372036854775807", math.maxinteger },
  { "y_number_int64_min", "-9223372036854775808", math.mininteger },
  { "y_number_beyond_int64", "9223372036854775808", 2.0 ^ 63 },
  { "y_number_very_big_negative_int", "[-237462374673276894279832749832423479823246327846]",
    { -237462374673276894279832749832423479823246327846.0 } },
  { "y_string_allowed_escapes", '["\\"\\\\\\/\\b\\f\\n\\r\\t"]', { '"\\/\b\f\n\r\t' } },
  { "y_string_null_escape", '["\\u0000"]', { "\0" } },
  { "y_string_nul_escapes_around", '"\\u0000a\\u0000"', "\0a\0" },
  { "y_string_escaped_control_character", '["\\u0012"]', { "\18" } },
  { "y_string_accepted_surrogate_pair", '["\\uD801\\udc37"]', { "\u{10437}" } },
  { "y_string_surrogates_U+1D11E", '["\\uD834\\uDd1e"]', { "\u{1D11E}" } },
  { "y_string_uEscape", '["\\u0061\\u30af\\u30EA\\u30b9"]', { "a\u{30af}\u{30ea}\u{30b9}" } },
  { "y_string_nonCharacterInUTF-8_U+FFFF", '["\239\191\191"]', { "\u{FFFF}" } },
  { "y_string_utf8", '["\226\130\172\240\157\132\158"]', { "\u{20AC}\u{1D11E}" } },
  { "y_string_space", '" "', " " },
  { "y_string_unicode_escaped_double_quote", '["\\u0022"]', { '"' } },
  { "y_string_with_del_character", '["a\127a"]', { "a\127a" } },
  { "y_string_1_2_3_bytes_UTF-8_sequences", '["\\u0060\\u012a\\u12AB"]', { "\u{60}\u{12a}\u{12ab}" } },
}

-- { name, text, offset, reason }
local refused = {
  -- numbers
  { "n_number_-01", "[-01]", 2, "leading zero in a number" },
  { "n_number_with_leading_zero", "[012]", 1, "leading zero in a number" },
  { "n_number_lone_-01", "-01", 1, "leading zero in a number" },
  { "n_number_00", "00", 0, "leading zero in a number" },
  { "n_number_2.", "[2.]", 3, "digit expected after the decimal point" },
  { "n_number_2.e3", "[2.e3]", 3, "digit expected after the decimal point" },
  { "n_number_-2.", "[-2.]", 4, "digit expected after the decimal point" },
  { "n_number_0.e1", "[0.e1]", 3, "digit expected after the decimal point" },
  { "n_number_.5", "[.5]", 1, "expected a value" },
  { "n_number_-.123", "[-.123]", 2, "digit expected after '-'" },
  { "n_number_+1", "[+1]", 1, "expected a value" },
  { "n_number_minus_only", "[-]", 2, "digit expected after '-'" },
  { "n_number_minus_space_1", "[- 1]", 2, "digit expected after '-'" },
  { "n_number_0e", "[0e]", 3, "digit expected in the exponent" },
  { "n_number_0E+", "[0E+]", 4, "digit expected in the exponent" },
  { "n_number_1.0e-", "[1.0e-]", 6, "digit expected in the exponent" },
  { "n_number_1eE2", "[1eE2]", 3, "digit expected in the exponent" },
  { "n_number_0_capital_E", "0E", 2, "digit expected in the exponent" },
  { "n_number_1_000", "[1 000.0]", 3, "expected ',' or ']'" },
  { "n_number_hex", "[0x1]", 2, "expected ',' or ']'" },
  { "n_number_Inf", "[Infinity]", 1, "expected a value" },
  { "n_number_NaN", "[NaN]", 1, "expected a value" },
  { "n_number_-NaN", "[-NaN]", 2, "digit expected after '-'" },
  { "n_number_0.3e+", "0.3e+", 5, "digit expected in the exponent" },
  { "n_number_real_garbage_after_e", "[1ea]", 3, "digit expected in the exponent" },
  { "n_number_with_alpha", "[1.2a-3]", 4, "expected ',' or ']'" },
  -- strings
  { "n_string_unescaped_tab", '["\t"]', 2, "control character in a string (it must be escaped)" },
  { "n_string_unescaped_newline", '["new\nline"]', 5, "control character in a string (it must be escaped)" },
  { "n_string_unescaped_ctrl_char", '["a\0a"]', 3, "control character in a string (it must be escaped)" },
  { "n_string_unescaped_1f", '"\31"', 1, "control character in a string (it must be escaped)" },
  { "n_string_escape_x", '["\\x00"]', 2, "invalid escape in a string" },
  { "n_string_escaped_emoji", '["\\\240\159\140\128"]', 2, "invalid escape in a string" },
  { "n_string_escaped_ctrl_char_tab", '["\\\t"]', 2, "invalid escape in a string" },
  { "n_string_invalid_backslash_esc", '["\\a"]', 2, "invalid escape in a string" },
  { "n_string_backslash_00", '["\\\0"]', 2, "invalid escape in a string" },
  { "n_string_1_surrogate_then_escape_u", '["\\uD800\\u"]', 8, "invalid \\u escape (four hex digits expected)" },
  { "n_string_invalid_unicode_escape", '["\\uqqqq"]', 2, "invalid \\u escape (four hex digits expected)" },
  { "n_string_u00G0", '["\\u00G0"]', 2, "invalid \\u escape (four hex digits expected)" },
  { "n_string_incomplete_escaped_character", '["\\u00A"]', 2, "invalid \\u escape (four hex digits expected)" },
  { "n_string_u12_short", '"\\u12"', 1, "invalid \\u escape (four hex digits expected)" },
  { "n_string_invalid_utf8_after_escape", '["\\u\229"]', 2, "invalid \\u escape (four hex digits expected)" },
  { "n_string_single_quote", "['single quote']", 1, "expected a value" },
  { "n_string_no_quotes_with_bad_escape", "[\\n]", 1, "expected a value" },
  { "n_string_single_doublequote", '"', 1, "unexpected end of input in a string" },
  { "n_string_incomplete_escape", '["\\"]', 5, "unexpected end of input in a string" },
  { "n_string_lone_backslash_at_end", '"\\', 2, "unexpected end of input in a string" },
  { "n_string_with_trailing_garbage", '""x', 2, "unexpected text after the value" },
  -- whitespace and structure
  { "n_structure_whitespace_formfeed", "[\f]", 1, "expected a value" },
  { "n_structure_formfeed_before_value", "\f1", 0, "expected a value" },
  { "n_structure_vertical_tab", "[1\v]", 2, "expected ',' or ']'" },
  { "n_structure_nbsp", "[\194\160]", 1, "expected a value" },
  { "n_structure_null_byte_outside_string", "[\0]", 1, "expected a value" },
  { "n_structure_nul_after_value", "[1]\0", 3, "unexpected text after the value" },
  { "n_structure_trailing_#", '{"a":"b"}#{}', 9, "unexpected text after the value" },
  { "n_structure_double_array", "[][]", 2, "unexpected text after the value" },
  { "n_structure_object_after_value", "1 {}", 2, "unexpected text after the value" },
  { "n_structure_close_unopened_array", "1]", 1, "unexpected text after the value" },
  { "n_structure_UTF8_BOM_no_data", "\239\187\191", 0, "expected a value" },
  { "n_structure_no_data", "", 0, "unexpected end of input" },
  { "n_structure_only_spaces", " \n ", 3, "unexpected end of input" },
  { "n_structure_unclosed_array", "[1", 2, "unexpected end of input" },
  { "n_structure_unclosed_object", '{"a":1', 6, "unexpected end of input" },
  { "n_structure_open_object_open_string", '{"a', 3, "unexpected end of input in a string" },
  { "n_structure_angle_bracket", "<.>", 0, "expected a value" },
  { "n_structure_capitalized_True", "[True]", 1, "expected a value" },
  { "n_structure_incomplete_true", "[tru]", 1, "invalid literal (true, false or null expected)" },
  { "n_structure_incomplete_null", "nul", 0, "invalid literal (true, false or null expected)" },
  { "n_structure_truex", "truex", 4, "unexpected text after the value" },
  { "n_array_extra_comma", '["",]', 4, "expected a value" },
  { "n_array_double_comma", "[1,,2]", 3, "expected a value" },
  { "n_array_just_comma", "[,]", 1, "expected a value" },
  { "n_array_missing_value", '[   , ""]', 4, "expected a value" },
  { "n_array_colon_instead_of_comma", '["": 1]', 3, "expected ',' or ']'" },
  { "n_array_items_separated_by_semicolon", "[1:2]", 2, "expected ',' or ']'" },
  { "n_array_unclosed_with_object_inside", "[{}", 3, "unexpected end of input" },
  { "n_object_trailing_comma", '{"id":0,}', 8, "expected a string key" },
  { "n_object_unquoted_key", "{a: 1}", 1, "expected a string key" },
  { "n_object_non_string_key", "{1:1}", 1, "expected a string key" },
  { "n_object_missing_colon", '{"a" b}', 5, "expected ':' after a key" },
  { "n_object_missing_value", '{"a":}', 5, "expected a value" },
  { "n_object_double_colon", '{"x"::"b"}', 5, "expected a value" },
  { "n_object_comma_instead_of_colon", '{"x", null}', 4, "expected ':' after a key" },
  { "n_object_with_single_string", '{ "foo" : "bar", "a" }', 21, "expected ':' after a key" },
  { "n_object_bracket_mismatch", '{"a":1]', 6, "expected ',' or '}'" },
  { "n_object_comment", '{"a":/*comment*/"b"}', 5, "expected a value" },
  { "n_structure_array_with_unclosed_string", '["asd]', 6, "unexpected end of input in a string" },
}

describe("json.decode (RFC 8259)", function()
  it("accepts every valid text, with the right value", function()
    for _, case in ipairs(accepted) do
      local name, text, want = case[1], case[2], case[3]
      local ok, got = pcall(json.decode, text)
      assert(ok, name .. ": " .. tostring(got))
      assert(same(got, want), name .. ": wrong value")
    end
    assert.is_true(#accepted >= 40)
  end)

  it("refuses every invalid text, naming the byte offset and the reason", function()
    for _, case in ipairs(refused) do
      local name, text, off, why = case[1], case[2], case[3], case[4]
      local ok, err = pcall(json.decode, text)
      assert(not ok, name .. " was accepted")
      local want = ("json.decode: invalid JSON at offset %d: %s"):format(off, why)
      assert(err:sub(1, #want) == want, name .. ": got " .. err .. ", want " .. want)
    end
    assert.is_true(#refused >= 80)
  end)

  it("keeps integers exact within int64 and reads bigger ones as floats", function()
    assert.are.equal(math.type(json.decode("9007199254740993")), "integer")
    assert.are.equal(json.decode("9007199254740993"), (1 << 53) + 1)
    assert.are.equal(json.decode("-9223372036854775808"), math.mininteger)
    assert.are.equal(math.type(json.decode("-9223372036854775809")), "float")
    assert.are.equal(math.type(json.decode("123456789012345678901234567890")), "float")
  end)

  it("round-trips strings with zero bytes", function()
    local s = "a\0b\0"
    assert.are.equal('"a\\u0000b\\u0000"', json.encode(s))
    assert.are.equal(s, json.decode(json.encode(s)))
    local t = json.decode(json.encode({ ["k\0"] = s }))
    assert.are.equal(s, t["k\0"])
  end)

  describe("what RFC 8259 leaves to the implementation", function()
    it("refuses unpaired surrogates", function()
      for _, text in ipairs {
        '["\\uDADA"]', -- i_string_1st_surrogate_but_2nd_missing
        '["\\uD888\\u1234"]', -- i_string_1st_valid_surrogate_2nd_invalid
        '["\\uD800\\n"]', -- i_string_incomplete_surrogate_and_escape_valid
        '["\\uDd1ea"]', -- i_string_incomplete_surrogate_pair
        '["\\uDFAA"]', -- i_string_lone_second_surrogate
        '["\\uDd1e\\uD834"]', -- i_string_inverted_surrogates_U+1D11E
        '["\\ud800abc"]', -- i_string_invalid_lonely_surrogate
      } do
        local ok, err = pcall(json.decode, text)
        assert(not ok, text .. " was accepted")
        assert(err:find("unpaired surrogate in a \\u escape", 1, true), err)
      end
    end)

    it("passes bytes that are not UTF-8 through, as the encoder writes them", function()
      assert.are.equal("\255", json.decode('"\255"'))
      assert.are.equal("\237\160\128", json.decode('"\237\160\128"')) -- a surrogate in UTF-8
      assert.are.equal("\192\175", json.decode('"\192\175"')) -- overlong
      assert.are.equal('"\255\254"', json.encode("\255\254"))
    end)

    it("refuses a byte order mark", function()
      local ok, err = pcall(json.decode, "\239\187\191{}")
      assert.is_false(ok)
      assert.truthy(err:find("offset 0: expected a value", 1, true))
    end)

    it("reads huge exponents as infinity and refuses them", function()
      local ok, err = pcall(json.decode, "[1.5e999]")
      assert.is_false(ok)
      assert.truthy(err:find("out of range", 1, true))
      assert.are.equal(0, json.decode("1e-999"))
    end)
  end)
end)

describe("json.decode in a run", function()
  -- a long array of small integers: Lua keeps it in a few MiB, cJSON's tree
  -- (a 64-byte node per element) is many times that
  local function numbers(n)
    return "[" .. ("1,"):rep(n - 1) .. "1]"
  end

  it("charges cJSON's tree to the run: past the cap the run fails with kind memory", function()
    local text = numbers(300000) -- 600 KB of text, ~25 MB of tree, 4-5 MiB of Lua table
    local ok, err = core.run({ memory = 10 * 1024 * 1024 }, function()
      return #core.json.decode(text)
    end)
    assert.is_false(ok)
    assert.are.equal("memory", err.kind)
  end)

  it("decodes normally within the cap", function()
    local text = numbers(300000)
    local ok, n = core.run({ memory = 64 * 1024 * 1024 }, function()
      local v = core.json.decode(text)
      return #v
    end)
    assert.is_true(ok, type(n) == "table" and n.message or tostring(n))
    assert.are.equal(300000, n)
  end)

  it("gives back what a decode charged: many decodes fit where one tree does", function()
    local text = numbers(50000) -- a tree of ~4 MB, freed after each decode
    local ok, n = core.run({ memory = 12 * 1024 * 1024 }, function()
      local total = 0
      for _ = 1, 20 do
        total = total + #core.json.decode(text)
        collectgarbage() -- the decoded tables are garbage too: only the tree's charge is in question
      end
      return total
    end)
    assert.is_true(ok, type(n) == "table" and n.message or tostring(n))
    assert.are.equal(20 * 50000, n)
  end)
end)
