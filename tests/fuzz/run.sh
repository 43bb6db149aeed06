#!/usr/bin/env bash
# run.sh — runs libFuzzer targets for a bounded time each (used by `make fuzz`).
#
#   bash tests/fuzz/run.sh BIN_DIR SECONDS TARGET...
#
# Each target BIN_DIR/TARGET runs for SECONDS on a scratch corpus directory
# (new inputs go there, never into the committed tests/fuzz/corpus/TARGET/,
# which is only read), with the dictionary tests/fuzz/TARGET.dict if there
# is one, and writes crash, leak, timeout and OOM inputs to
# BIN_DIR/crashes/TARGET/. One summary line per target at the end:
#   TARGET  SECONDS s  EXECUTIONS execs  EXEC/S exec/s  corpus N  crashes N
# Exits 1 when any target crashed (or did not run), else 0.
set -u

bin_dir=$1
seconds=$2
shift 2

status=0
summaries=()
for target in "$@"; do
    seeds=tests/fuzz/corpus/$target
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/chorus-fuzz-$target.XXXXXX")
    artifacts=$bin_dir/crashes/$target
    log=$bin_dir/$target.log
    mkdir -p "$artifacts"
    marker=$(mktemp "${TMPDIR:-/tmp}/chorus-fuzz-start.XXXXXX") # artifacts newer are this run's
    echo "== $target: ${seconds}s on $seeds (scratch corpus $scratch, log $log)"
    dict=()
    if [ -f "tests/fuzz/$target.dict" ]; then
        dict=(-dict="tests/fuzz/$target.dict")
    fi
    start=$(date +%s)
    # -timeout: one input may take at most 25 s; -rss_limit_mb: the default,
    # stated; -print_final_stats: the numbers of the summary line.
    "$bin_dir/$target" "$scratch" "$seeds" \
        -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" ${dict[@]+"${dict[@]}"} >"$log" 2>&1
    rc=$?
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | sed 's/corp: //')
    crashes=$(find "$artifacts" -type f -newer "$marker" | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # died without an artifact (e.g. a setup failure)
    fi
    line=$(printf '%-20s %4s s  %10s execs  %7s exec/s  corpus %5s  crashes %s' \
        "$target" "$elapsed" "${execs:-?}" "${rate:-?}" "${corpus:-?}" "$crashes")
    summaries+=("$line")
    if [ "$crashes" -ne 0 ]; then
        status=1
        echo "!! $target crashed (exit $rc); the end of $log:"
        tail -40 "$log"
        find "$artifacts" -type f -newer "$marker" -exec echo "   input saved: {}" \;
    fi
    rm -rf "$scratch" "$marker"
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '%s\n' "${summaries[@]}"
exit $status
