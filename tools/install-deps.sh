#!/usr/bin/env bash
# Installs what is missing on a fresh Debian machine (idempotent, quick when all is there).
#   tools/install-deps.sh demo   R and the R packages the demo needs, from Debian
#   tools/install-deps.sh check  everything for R CMD check, tests, vignettes and benchmarks,
#                                plus the Python peers venv (bench/setup-peers.sh)
set -euo pipefail
level=${1:-check}
here=$(cd "$(dirname "$0")/.." && pwd)

demo_pkgs="r-base-dev r-cran-matrix r-cran-ggplot2 r-cran-hdf5r libopenblas0-pthread"
check_pkgs="$demo_pkgs r-cran-testthat r-cran-reticulate r-cran-knitr r-cran-rmarkdown
  r-cran-withr r-cran-roxygen2 r-cran-pkgbuild r-cran-pkgload r-cran-seurat r-cran-seuratobject
  r-bioc-singlecellexperiment r-bioc-summarizedexperiment r-bioc-delayedarray
  r-bioc-hdf5array pandoc time python3-venv"
case "$level" in
  demo) pkgs=$demo_pkgs ;;
  check) pkgs=$check_pkgs ;;
  *) echo "usage: $0 demo|check" >&2; exit 2 ;;
esac

missing=""
for p in $pkgs; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
# python3-venv: the image's own python (pyenv) already has venv; only ask Debian when it lacks it
if echo "$missing" | grep -q python3-venv && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=$(echo "$missing" | sed 's/python3-venv//')
fi
if [ -n "$(echo "$missing" | tr -d ' ')" ]; then
  echo "installing from Debian:$missing"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends $missing
else
  echo "Debian packages: all present"
fi

if [ "$level" = check ]; then
  bash "$here/bench/setup-peers.sh"
fi
