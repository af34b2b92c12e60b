#!/usr/bin/env bash
# Finds flaky tests: runs the reference tests (those matching PYTEST-FILTER, or all) N times in
# a row, with --load under `stress-ng --cpu 2` (both cores kept busy), and prints a table of
# passes and failures per test. Each run's report is kept in $QUIVER_CACHE/repeat/.
#   bash scripts/repeat.sh N [--load] [PYTEST-FILTER]
source "$(dirname "$0")/env.sh"
cd "$QUIVER_ROOT"
runs=${1:?usage: repeat.sh N [--load] [PYTEST-FILTER]}
shift
load=0
if [ "${1:-}" = --load ]; then
    load=1
    shift
fi
filter=(${1:+-k "$1"})
quiver_install_packages
quiver_start_refenv
[ $load = 1 ] && quiver_apt stress-ng
quiver_cargo build --locked --workspace --all-targets
reports="$QUIVER_CACHE/repeat/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$reports"
stress=
if [ $load = 1 ]; then
    stress-ng --cpu 2 --quiet &
    stress=$!
    trap 'kill $stress 2>/dev/null || true' EXIT
fi
for i in $(seq 1 "$runs"); do
    quiver_log "run $i of $runs$([ $load = 1 ] && echo ' (under stress-ng --cpu 2)')"
    quiver_pytest -q "${filter[@]}" --junitxml="$reports/run-$i.xml" || true
done
"$REFENV/bin/python" - "$reports" <<'PY'
import collections, glob, sys
import xml.etree.ElementTree as ET
counts = collections.defaultdict(collections.Counter)
files = sorted(glob.glob(f"{sys.argv[1]}/run-*.xml"))
for path in files:
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        counts[name][kind] += 1
width = max(map(len, counts), default=4)
print(f"\n{'test':{width}}  passed  failed  skipped   ({len(files)} runs, reports in {sys.argv[1]})")
for name in sorted(counts, key=lambda n: (-(counts[n]['failure'] + counts[n]['error']), n)):
    c = counts[name]
    print(f"{name:{width}}  {c['passed']:6}  {c['failure'] + c['error']:6}  {c['skipped']:7}")
flaky = [n for n in counts if counts[n]["failure"] + counts[n]["error"]]
print(f"\n{len(flaky)} of {len(counts)} tests failed at least once")
sys.exit(1 if flaky else 0)
PY
