#!/usr/bin/env bash
# Download, here, the wheels that a lent GPU machine needs and cannot fetch (it reaches no package registry):
# exactly the packages pinned in wheels.txt, built for the device's Python 3.12 on x86-64 Linux, into wheels/
# (ignored by git; the device call carries it). Fails if the wheels and the rest of the travelling working tree
# exceed the device tool's 64 MiB, or if a wheel other than those pinned lands there.
#
#   benchmarks/gpu/fetch_wheels.sh            # PYTHON=python3 by default; any Python with pip will do
#   KIT_PY=3.11 KIT_WHEELS=/tmp/wheels311 benchmarks/gpu/fetch_wheels.sh   # a set for trying run.sh elsewhere
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="${KIT_WHEELS:-$here/wheels}"
py="${KIT_PY:-3.12}"  # the device's Python
python="${PYTHON:-python3}"
limit=$((64 * 1024 * 1024))  # the device tool's limit on everything that travels in one call

# The pins, without comments: "name==version" per line.
mapfile -t pins < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$here/wheels.txt")

# No stale wheel of another version: it would make the --no-index install ambiguous.
mkdir -p "$dest"
rm -f "$dest"/*.whl
# --no-deps: the device already holds the pins' other requirements (device-has.txt); pulling them would carry
# numpy, scipy, jax... for nothing. pip matches manylinux tags exactly, so the usual ones are all named.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$dest" "${pins[@]}"

# Exactly one wheel per pin, and nothing else.
count=$(find "$dest" -name '*.whl' | wc -l)
if [ "$count" -ne "${#pins[@]}" ] || [ "$(find "$dest" -type f | wc -l)" -ne "$count" ]; then
    echo "fetch_wheels.sh: expected ${#pins[@]} wheels in $dest, found:" >&2
    ls -l "$dest" >&2
    exit 1
fi

# Size: the wheels plus what travels anyway (tracked and untracked-not-ignored files of this checkout).
wheels=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
tree=$(cd "$root" && git ls-files -co --exclude-standard -z | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "fetch_wheels.sh: ${#pins[@]} wheels, $(mib "$wheels"); with the working tree ($(mib "$tree")):" \
     "$(mib $((wheels + tree))) of the device call's $(mib $limit)"
if [ $((wheels + tree)) -gt $limit ]; then
    echo "fetch_wheels.sh: too large for one device call: drop a wheel from wheels.txt or shrink the tree" >&2
    exit 1
fi
