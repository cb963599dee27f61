#!/bin/sh
# The diffusers range in pyproject.toml is tested at both ends: the constraints pin the top
# (every test run uses it); this runs the diffusion tests on the floor, in a throwaway
# environment layered over the README's .venv (only diffusers differs).
#
#   sh packaging/check-diffusers-floor.sh            # the floor pyproject.toml declares
#   sh packaging/check-diffusers-floor.sh 0.41.0     # or any version
set -eu
cd "$(dirname "$0")/.."
version=${1:-$(.venv/bin/python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
(spec,) = [d for d in deps if d.startswith("diffusers")]
print(re.search(r">=\s*([\d.]+)", spec).group(1))
PY
)}
layer=$(mktemp -d)
trap 'rm -rf "$layer"' EXIT
.venv/bin/python -m venv "$layer"
site=$("$layer/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
base=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# The layer's own packages come first; the project venv's follow, its editable install included.
echo "import site; site.addsitedir('$base')" > "$site/project.pth"
"$layer/bin/python" -m pip install -q --no-deps "diffusers==$version"
echo "diffusers $("$layer/bin/python" -c 'import diffusers; print(diffusers.__version__)')"
QT_QPA_PLATFORM=offscreen "$layer/bin/python" -m pytest -q -p no:cacheprovider \
    tests/unit/test_creative.py tests/unit/test_creative_full_size.py tests/unit/test_sd_loading.py \
    tests/unit/test_multidiffusion.py tests/unit/test_tiled_vae.py tests/unit/test_text_encoder.py \
    tests/unit/test_presets.py
