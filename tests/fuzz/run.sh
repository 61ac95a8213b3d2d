#!/bin/sh
# Run each libFuzzer harness for its share of SECONDS: tests/fuzz/run.sh SECONDS HARNESS...
# (from the repository root, after the harnesses and seeds are built in build/fuzz). Each harness's
# whole output goes to build/fuzz/<harness>/log.txt; its last statistics are printed. Fails when a
# harness leaves a finding (a crash-, leak-, timeout- or oom- file) or exits non-zero
# without one (a fuzzer that died early is not a clean run).
secs=$1; shift
per=$((secs / $#))
rc=0
for h in "$@"; do
  dir=build/fuzz/$h
  mkdir -p "$dir/corpus"
  rm -f "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-* "$dir"/slow-unit-*
  regress=$PWD/tests/fuzz/seeds/$h  # earlier findings, replayed by every run (when there are any)
  [ -d "$regress" ] || regress=
  echo "== fuzz $h for $per s (log: $dir/log.txt)"
  (cd "$dir" && ASAN_OPTIONS=detect_leaks=1 ../bin/"$h" -max_total_time="$per" -max_len=65536 -rss_limit_mb=4096 \
     -timeout=20 -print_final_stats=1 corpus ../seeds/"$h" $regress >log.txt 2>&1)
  status=$?
  grep -E "cov:.*ft:" "$dir/log.txt" | tail -1
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$dir/log.txt"
  found=$(ls "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-* 2>/dev/null)
  if [ -n "$found" ]; then
    echo "fuzz $h: FOUND $found"; grep -E "ERROR|SUMMARY" "$dir/log.txt" | head -5; rc=1
  elif [ $status -ne 0 ]; then
    echo "fuzz $h: the fuzzer exited with status $status; the end of its log:"; tail -15 "$dir/log.txt"; rc=1
  fi
done
exit $rc
