#!/usr/bin/env bash
# test.sh — runs every test and ends with one line "N passed, N failed".
#   scripts/test.sh                  C unit tests + all busted specs (build/)
#   scripts/test.sh --sanitized      C unit tests + integration specs against the
#                                    ASan/UBSan build (CHORUS_BUILD=build-asan)
#   scripts/test.sh --and-sanitized  the first, then the second; the last line
#                                    counts both (make test)
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${CHORUS_BUILD:-build}
export CHORUS_BUILD=$BUILD
passed=0
failed=0

for t in "$BUILD"/test_*; do
  [ -x "$t" ] || continue
  echo "== $t"
  out=$("$t" 2>&1); rc=$?
  echo "$out" | tail -n 20
  line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
  passed=$((passed + ${p:-0}))
  if [ $rc -ne 0 ] && [ "${f:-0}" -eq 0 ]; then f=1; fi
  failed=$((failed + ${f:-0}))
done
c_passed=$passed
c_failed=$failed

if [ "${1:-}" = "--sanitized" ]; then
  roots=(tests/integration)
else
  roots=()
fi
echo "== busted ${roots[*]:-(all specs)}"
out=$(busted -o utfTerminal "${roots[@]}" 2>&1); rc=$?
echo "$out" | tail -n 60
line=$(echo "$out" | grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' | tail -n 1)
s=$(echo "$line" | grep -oE '[0-9]+ success' | grep -oE '[0-9]+')
fl=$(echo "$line" | grep -oE '[0-9]+ failure' | grep -oE '[0-9]+')
er=$(echo "$line" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+')
passed=$((passed + ${s:-0}))
failed=$((failed + ${fl:-0} + ${er:-0}))
if [ $rc -ne 0 ] && [ $((${fl:-0} + ${er:-0})) -eq 0 ]; then failed=$((failed + 1)); fi
echo "C unit checks ($BUILD): $c_passed passed, $c_failed failed"
echo "busted specs ($BUILD): $((passed - c_passed)) passed, $((failed - c_failed)) failed"

if [ "${1:-}" = "--and-sanitized" ]; then
  echo
  echo "$passed passed, $failed failed (build/)"
  echo "== the same C unit and integration tests under ASan + UBSan (build-asan/)"
  out=$(CHORUS_BUILD=build-asan bash "$0" --sanitized 2>&1); rc=$?
  echo "$out" | tail -n 40
  line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  if [ $rc -ne 0 ] && [ "${f:-0}" -eq 0 ]; then failed=$((failed + 1)); fi
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
