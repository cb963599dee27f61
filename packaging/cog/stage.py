"""Stage the Cog build folder: Clarifier's engine as a Cog model, for ``cog build`` / ``cog push``.

``cog build`` packs the folder that holds ``cog.yaml`` into the image as ``/src``. This script
makes that folder (``build/cog`` by default) from the checkout:

* ``cog.yaml`` and ``predict.py`` from here (``--accept-model-licences`` turns on the line that
  lets the set-up download missing models, accepting their licences);
* Clarifier's source, as ``/src`` imports it: ``app/``, ``pipeline/`` and ``resources/`` as
  ``clarifier_resources/`` (the name the installed package has);
* ``requirements.txt``: the runtime pins of ``requirements/constraints.txt`` (the project's
  dependencies with the ``heif`` and ``handfix`` extras, without the window's Qt and without
  Cog, which ``cog build`` installs itself) and the torch the project is tested with;
* ``openapi_schema.json``: the served model's OpenAPI document, from the runner's signature
  (``app.serve.schema``). Pass it to Cog with ``COG_OPENAPI_SCHEMA=openapi_schema.json``: the
  image inputs are then published as URIs, as Clarity's are.

No model file is staged. Run it with the project's environment, then build from the folder::

    .venv/bin/python packaging/cog/stage.py
    cd build/cog && COG_OPENAPI_SCHEMA=openapi_schema.json cog build -t clarifier
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXTRAS = ("heif", "handfix")  # HEIC inputs, and Clarity's handfix input
LEFT_OUT = frozenset({"pyside6-essentials", "qasync", "cog", "coglet"})
LICENCES_LINE = "# - CLARIFIER_ACCEPT_MODEL_LICENCES=1"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==\S+")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# "    # via jax" or, in a list after "    # via", "    #   jax"
_VIA = re.compile(r"^\s+#\s+(?:via\s+)?(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(specs: Iterable[str]) -> set[str]:
    names = set()
    for spec in specs:
        match = _NAME.match(spec)
        if match:
            names.add(_normal(match.group(1)))
    return names


def runtime_requirements(pyproject: Path, constraints: Path) -> list[str]:
    """The lines of ``constraints`` the served engine needs: the closure of the project's
    dependencies (and :data:`EXTRAS`) over the file's ``# via`` annotations, without
    :data:`LEFT_OUT`; then the torch pin of ``[tool.uv] constraint-dependencies``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    extras = project["project"]["optional-dependencies"]
    roots = _requirement_names(project["project"]["dependencies"])
    for extra in EXTRAS:
        roots |= _requirement_names(extras[extra])
    roots -= LEFT_OUT  # nor what only they need
    pins: dict[str, list[str]] = {}  # a package may have a line per Python-version fork
    parents: dict[str, set[str]] = {}
    current = ""
    for line in constraints.read_text(encoding="utf-8").splitlines():
        pin = _PIN.match(line)
        if pin:
            current = _normal(pin.group("name"))
            pins.setdefault(current, []).append(line.strip())
            parents.setdefault(current, set())
            continue
        via = _VIA.match(line)
        if current and via and via.group("name") != "clarifier":
            parents[current].add(_normal(via.group("name")))
    needed = {name for name in roots if name in pins}
    grew = True
    while grew:
        more = {name for name, of in parents.items() if name not in needed and of & needed}
        needed |= more
        grew = bool(more)
    lines = [line for name in sorted(needed - LEFT_OUT) for line in pins[name]]
    torch = [
        spec
        for spec in project["tool"]["uv"].get("constraint-dependencies", [])
        if _normal(spec.split("=")[0]) == "torch"
    ]
    return lines + torch


def _copy_tree(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def stage(dest: Path, *, accept_model_licences: bool = False, root: Path = ROOT) -> Path:
    """Write the build folder ``dest`` (emptied first); returns it."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    config = (HERE / "cog.yaml").read_text(encoding="utf-8")
    if accept_model_licences:
        if LICENCES_LINE not in config:
            raise SystemExit(f"stage: cog.yaml has no line {LICENCES_LINE!r} to turn on")
        config = config.replace(LICENCES_LINE, LICENCES_LINE.replace("# - ", "- ", 1))
    (dest / "cog.yaml").write_text(config, encoding="utf-8")
    shutil.copy(HERE / "predict.py", dest / "predict.py")
    _copy_tree(root / "app", dest / "app")
    _copy_tree(root / "pipeline", dest / "pipeline")
    _copy_tree(root / "resources", dest / "clarifier_resources")
    requirements = runtime_requirements(
        root / "pyproject.toml", root / "requirements" / "constraints.txt"
    )
    (dest / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    sys.path.insert(0, str(root))
    from app.serve.schema import write_schema

    write_schema(dest / "openapi_schema.json")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", type=Path, default=ROOT / "build" / "cog")
    parser.add_argument(
        "--accept-model-licences",
        action="store_true",
        help="let the image's set-up download the models it is missing, accepting their "
        "licences (for hosts without a models volume, such as Replicate)",
    )
    args = parser.parse_args(argv)
    dest = stage(args.dest.resolve(), accept_model_licences=args.accept_model_licences)
    sys.stdout.write(
        f"staged {dest}; now: cd {dest} && COG_OPENAPI_SCHEMA=openapi_schema.json cog build\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
