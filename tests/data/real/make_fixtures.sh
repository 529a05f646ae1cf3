#!/usr/bin/env bash
# Rewrites every fixture of tests/data/real/ with the real writers (needs R and Debian's packages:
# apt-get install r-base-core r-bioc-singlecellexperiment r-cran-seuratobject r-bioc-dropletutils;
# pip install loompy openpyxl). CI never runs this: it reads the committed files.
set -euo pipefail
cd "$(dirname "$0")"
Rscript make_fixtures.R .
python make_fixtures.py .
