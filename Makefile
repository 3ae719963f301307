# scnative: the two commands of the README.
#   make demo    installs what is missing, installs scnative, runs the demo on bundled data
#   make check   installs what is missing (incl. the Python peers venv), builds the tarball,
#                runs R CMD check (tests, parity tests against live upstream, vignettes) and
#                ends with one line "N passed, N failed, N skipped"
#   make fuzz N=10000 SEED=1   installs the tree into build/fuzz-lib and runs the long fuzz
#                campaign of the exported API (build/fuzz-report.md); a fixed-seed subset runs
#                in `make check` (tests/testthat/test-fuzz.R); OBJECTS=0 leaves out the Seurat /
#                SingleCellExperiment methods, CASES='SCE|SEURAT' fuzzes only them (a regex on
#                the case names)
#   make sanitize  builds with -fsanitize=address,undefined into build/sanitize and runs the
#                fuzz subset and the test files without Python under it
SHELL := /bin/bash
PKG := scnative
VERSION := $(shell sed -n 's/^Version: *//p' DESCRIPTION)
TARBALL := $(PKG)_$(VERSION).tar.gz
BUILD := build
SHARED_DATA := $(abspath ../shared/data)

N ?= 1000
SEED ?= 1
OBJECTS ?= 1
CASES ?=
# each fuzz child may use at most this much virtual memory (KiB): huge sizes must fail fast
FUZZ_MEM_KB ?= 8000000

.PHONY: demo check deps-demo deps-check install docs clean fuzz sanitize

deps-demo:
	bash tools/install-deps.sh demo

deps-check:
	bash tools/install-deps.sh check

install:
	rm -f src/*.o src/*.so
	R CMD INSTALL --preclean --no-multiarch . > $(BUILD)/install.log 2>&1 || (cat $(BUILD)/install.log; exit 1)
	rm -f src/*.o src/*.so

demo: deps-demo
	mkdir -p $(BUILD)
	$(MAKE) --no-print-directory install
	Rscript tools/demo.R $(BUILD)/demo

docs:
	Rscript -e 'roxygen2::roxygenise()'
	rm -f src/*.o src/*.so

check: deps-check
	bash tools/check.sh

# the tree is installed into a private library first (other libraries stay untouched)
fuzz:
	mkdir -p $(BUILD)/fuzz-lib
	rm -f src/*.o src/*.so
	R CMD INSTALL --preclean --no-multiarch -l $(BUILD)/fuzz-lib . > $(BUILD)/fuzz-install.log 2>&1 || (cat $(BUILD)/fuzz-install.log; exit 1)
	rm -f src/*.o src/*.so
	ulimit -v $(FUZZ_MEM_KB); R_LIBS="$(abspath $(BUILD))/fuzz-lib:$${R_LIBS:-}" OMP_THREAD_LIMIT=2 \
	  Rscript tools/fuzz.R N=$(N) SEED=$(SEED) OBJECTS=$(OBJECTS) CASES="$(CASES)" OUT=$(BUILD)/fuzz-report.md

sanitize:
	bash tools/sanitize.sh

clean:
	rm -rf $(BUILD) $(PKG).Rcheck $(PKG)_*.tar.gz src/*.o src/*.so
