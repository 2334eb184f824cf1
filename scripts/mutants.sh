#!/usr/bin/env bash
# Mutation checks of the security defences listed in docs/security.md: each mutant under
# scripts/mutants/ removes or inverts one defending line; its test must then fail ("killed").
# A mutant whose test still passes ("SURVIVED") means the test does not prove the defence.
#
# Usage: scripts/mutants.sh [NAME...]   (default: every scripts/mutants/*.mutant)
# Mutant file format:
#   file: PATH            the source file to change
#   test: CARGO TEST ARGS the test that must fail
#   --- find              the exact text to replace (must occur once)
#   --- replace           its replacement (may be empty)
# Each file is restored after its run (also on Ctrl-C). Exit status 1 if any mutant survived
# or could not be applied.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=scripts/mutants
if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for f in "$dir"/*.mutant; do names+=("$(basename "$f" .mutant)"); done
fi

backup=""
target=""
restore() { if [ -n "$backup" ] && [ -f "$backup" ]; then cp "$backup" "$target"; rm -f "$backup"; fi; backup=""; }
trap 'restore; exit 130' INT TERM

failed=0
printf '%-28s %-10s %s\n' MUTANT RESULT TEST
for name in "${names[@]}"; do
  spec="$dir/$name.mutant"
  target=$(sed -n 's/^file: //p' "$spec" | head -1)
  test_args=$(sed -n 's/^test: //p' "$spec" | head -1)
  backup=$(mktemp)
  cp "$target" "$backup"
  if ! python3 - "$spec" "$target" <<'PY'
import sys
spec, target = sys.argv[1], sys.argv[2]
text = open(spec).read()
find = text.split("--- find\n", 1)[1].split("\n--- replace\n", 1)[0]
replace = text.split("\n--- replace\n", 1)[1]
if replace.endswith("\n"):
    replace = replace[:-1]
src = open(target).read()
if src.count(find) != 1:
    sys.exit(f"find text occurs {src.count(find)} times in {target}")
open(target, "w").write(src.replace(find, replace))
PY
  then
    printf '%-28s %-10s %s\n' "$name" NOT-APPLIED "$test_args"
    failed=1
    restore
    continue
  fi
  # shellcheck disable=SC2086
  if cargo test -q $test_args >"target/mutant-$name.log" 2>&1; then
    printf '%-28s %-10s %s\n' "$name" SURVIVED "$test_args"
    failed=1
  elif grep -q "could not compile" "target/mutant-$name.log"; then
    # A mutant that does not build proves nothing about the test.
    printf '%-28s %-10s %s\n' "$name" NO-BUILD "$test_args"
    failed=1
  else
    printf '%-28s %-10s %s\n' "$name" killed "$test_args"
  fi
  restore
done
exit $failed
