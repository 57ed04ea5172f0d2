#!/usr/bin/env bash
# Installs the offline data sets (see hatzoo/data). Filled in by the data module.
set -euo pipefail
