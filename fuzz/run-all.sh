#!/usr/bin/env bash
# Runs every fuzz target in turn (one fuzzer at a time, one process each), seeding the working
# corpus from the committed seeds. Usage: fuzz/run-all.sh [runs] [max seconds per target]
# Logs and final stats go to fuzz/logs/<target>.log; corpora stay in fuzz/corpus (not committed).
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${1:-10000000}
MAX_TIME=${2:-900}
TARGETS=${TARGETS:-"peer_json envelope federation_request jwt twins_file relay_config"}
mkdir -p logs
for t in $TARGETS; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  echo "== $t: $(date -u +%H:%M:%S)"
  RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run -s none -a "$t" "corpus/$t" -- \
    -runs="$RUNS" -max_total_time="$MAX_TIME" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 > "logs/$t.log" 2>&1 || echo "   $t exited non-zero (see logs/$t.log)"
  grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb" "logs/$t.log" || true
  echo "   corpus: $(ls "corpus/$t" | wc -l) files, $(du -sh "corpus/$t" | cut -f1)"
  ls artifacts/"$t" 2>/dev/null | sed 's/^/   artifact: /' || true
done
