#!/usr/bin/env bash
# `make sanitize`: builds scnative with -fsanitize=address,undefined into a private library
# (build/sanitize/lib), preloads gcc's libasan into R (R is not built with ASan; the package's
# shared object is) and runs the fixed-seed fuzz subset and the test files under it. Python is
# hidden (the parity tests skip: an ASan-preloaded Python is not what we test). Every ASan or
# UBSan report is written to build/sanitize/reports/; the run fails if there is one.
#   TESTS="test-rng.R test-fuzz.R" make sanitize    # a subset of the test files
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build/sanitize
rm -rf "$out"
mkdir -p "$out/lib" "$out/reports" "$out/pkg"
t0=$(date +%s)
# a clean copy of the sources (no stale objects of a normal build)
git ls-files -z | xargs -0 tar -cf - | tar -xf - -C "$out/pkg"
rm -f "$out"/pkg/src/*.o "$out"/pkg/src/*.so
if ! R_MAKEVARS_USER="$root/tools/sanitize.mk" R CMD INSTALL --no-multiarch --no-test-load \
     -l "$out/lib" "$out/pkg" > "$out/install.log" 2>&1; then
  tail -40 "$out/install.log"; exit 1
fi
asan=$(gcc -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "libasan.so not found (gcc -print-file-name=libasan.so)"; exit 1; }
t1=$(date +%s)
echo "sanitized build: $((t1 - t0)) s"
export LD_PRELOAD="$asan"
# detect_leaks=0: R frees its heap at exit only partly, so leak reports would be R's own
# allocator_may_return_null: a huge allocation fails in R ("cannot allocate") as without ASan
# (read_h5ad's tests exhaust a memory cap on purpose)
# libhdf5 (a system library, not instrumented) reads freed memory on some corrupt files; ASan
# sees it only through its memcpy interceptor. read_h5ad() runs such reads in a forked child,
# which dies and is reported as a corrupt file (test-h5ad-hostile). Our code stays checked.
printf 'interceptor_via_lib:libhdf5\n' > "$out/asan.supp"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:suppressions=$out/asan.supp:log_path=$out/reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:log_path=$out/reports/ubsan"
export R_LIBS="$out/lib"
export SCNATIVE_PEERS_PYTHON=/nonexistent SCNATIVE_REQUIRE_PEERS=false
export SCNATIVE_SANITIZE=true OMP_THREAD_LIMIT=2
[ -d ../shared/data ] && export SCNATIVE_SHARED_DATA="$(cd ../shared/data && pwd)"
tests=${TESTS:-$(cd tests/testthat && ls test-*.R | grep -v -e test-patch.R)}
fail=0
cd tests/testthat
for f in $tests; do
  s=$(date +%s)
  Rscript -e "library(testthat); library(scnative); r <- as.data.frame(test_file('$f', package = 'scnative', load_package = 'installed', reporter = 'silent', stop_on_failure = FALSE)); if (any(r\$failed > 0 | r\$error)) print(r[r\$failed > 0 | r\$error, c('test', 'failed', 'error')]); cat(sprintf('%d tests, %d failed, %d skipped', nrow(r), sum(r\$failed > 0 | r\$error), sum(r\$skipped)))" \
    > "$out/$f.log" 2>&1
  st=$?
  echo "$f: $(tail -1 "$out/$f.log") ($(( $(date +%s) - s )) s, exit $st)"
  if [ $st -ne 0 ] || ! tail -1 "$out/$f.log" | grep -q ', 0 failed,'; then
    fail=1; tail -20 "$out/$f.log"
  fi
done
cd "$root"
n=$(ls "$out/reports" | wc -l)
echo "sanitize: $n report file(s) in $out/reports; total $(( $(date +%s) - t0 )) s"
if [ "$n" -gt 0 ]; then
  for r in "$out"/reports/*; do echo "== $r"; head -30 "$r"; done
  fail=1
fi
exit $fail
