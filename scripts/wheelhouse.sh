#!/usr/bin/env bash
# Build an offline wheelhouse of llem-mlflow and its dependencies for an air-gapped x86_64 Linux GPU host.
#
# usage: scripts/wheelhouse.sh [-p PYVER] [-o DIR] [-x EXCLUDE_FILE] [--with-torch]
#   -p PYVER         target CPython version, e.g. 3.12 (default 3.12)
#   -o DIR           output folder (default ./wheelhouse)
#   -x EXCLUDE_FILE  package names (one per line, # comments) already installed on the target: their wheels
#                    are dropped so the install does not shadow the host's builds (e.g. its CUDA torch, numpy)
#   --with-torch     also fetch torch/transformers (by default the GPU host is expected to have its own CUDA torch)
# On the target:  pip install --no-index --find-links DIR llem-mlflow
#            or:  pip install --no-index --no-deps --target SITE DIR/*.whl && export PYTHONPATH=SITE
set -euo pipefail
pyver=3.12; out=wheelhouse; exclude=""; with_torch=0
while [ $# -gt 0 ]; do
  case "$1" in
    -p) pyver=$2; shift 2 ;;
    -o) out=$2; shift 2 ;;
    -x) exclude=$2; shift 2 ;;
    --with-torch) with_torch=1; shift ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
mkdir -p "$out"
"$py" -m pip wheel --no-deps --quiet -w "$out" "$here"
reqs=$("$py" - "$here/pyproject.toml" "$with_torch" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
skip = () if sys.argv[2] == "1" else ("torch", "transformers")
print("\n".join(d for d in deps if not d.lower().startswith(skip)))
PY
)
plats=""
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 linux_x86_64; do plats="$plats --platform $p"; done
# shellcheck disable=SC2086
echo "$reqs" | xargs "$py" -m pip download --quiet --only-binary=:all: --implementation cp \
  --python-version "$pyver" $plats -d "$out"
if [ -n "$exclude" ]; then
  while read -r name; do
    name=${name%%#*}; name=$(echo "$name" | tr -d '[:space:]' | tr 'A-Z-' 'a-z_')
    [ -n "$name" ] || continue
    for f in "$out"/*.whl; do
      base=$(basename "$f" | cut -d- -f1 | tr 'A-Z-' 'a-z_')
      [ "$base" = "$name" ] && [ "$base" != "llem_mlflow" ] && rm -f "$f"
    done
  done < "$exclude"
fi
echo "wheelhouse: $(ls "$out" | wc -l) files, $(du -sh "$out" | cut -f1) in $out"
