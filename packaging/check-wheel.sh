#!/bin/sh
# The wheel as a user gets it: build it, install it with the pinned working set into a second,
# clean virtual environment, check its requirements, and upscale a photo with the installed
# `clarifier` from a folder outside the checkout. Run after the tests (.ci/run does); it needs
# the development environment in .venv (for the build) and reuses pip's cache.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
constraints="$root/requirements/constraints.txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "check-wheel: building the wheel"
"$root/.venv/bin/pip" wheel --quiet --no-deps --no-build-isolation -w "$work/dist" "$root"
wheel=$(ls "$work"/dist/clarifier-*.whl)

echo "check-wheel: installing $(basename "$wheel") into a clean environment"
python3 -m venv "$work/venv"
bin="$work/venv/bin"
"$bin/pip" install --quiet torch==2.13.0 -c "$constraints"
"$bin/pip" install --quiet "$wheel" -c "$constraints"
"$bin/pip" check

cd "$work"
export CLARIFIER_HOME="$work/home" XDG_DATA_HOME="$work/xdg" HF_HUB_OFFLINE=1
mkdir photos
"$bin/python" -c "
import shutil, sys
from pipeline.paths import resources_dir
assert 'site-packages' in str(resources_dir()), resources_dir()
shutil.copy(resources_dir() / 'samples' / 'astronaut.jpg', 'photos/')
"
echo "check-wheel: upscaling with the installed clarifier, from $work"
"$bin/clarifier" upscale photos/ -o out/ --scale 2 --no-progress
"$bin/clarifier" info out/astronaut.png | grep -q "Scale: 2, Mode: faithful" \
    || { echo "check-wheel: the output carries no parameters" >&2; exit 1; }
"$bin/python" -c "
from PIL import Image
size = Image.open('out/astronaut.png').size
assert size == (400, 400), size
"
"$bin/clarifier" desktop install >/dev/null
if command -v desktop-file-validate >/dev/null 2>&1; then
    desktop-file-validate "$XDG_DATA_HOME/applications/io.github.clarifier.Clarifier.desktop"
fi
echo "check-wheel: ok"
