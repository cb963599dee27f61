"""What a fresh machine installs and what the wheel carries: the pinned working set is complete,
compiled from pyproject.toml and installed here; the wheel holds every resource and finds it
outside the source tree; the desktop entry, AppStream metadata and icons validate and install."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app import APP_ID
from app.cli.desktop import desktop_files, install, uninstall
from app.entry import COMMANDS, wants_window

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Torch is installed first, for the hardware; the CUDA build's own packages are never pinned.
_NEVER_PINNED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def _pins() -> dict[str, list[tuple[str, str]]]:
    """Name → [(version, marker)] of every line of the constraints file."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one ==, nothing looser
        assert spec.operator == "==", line
        pins.setdefault(canonicalize_name(req.name), []).append(
            (spec.version, str(req.marker or ""))
        )
    return pins


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: run sh packaging/install-debian-packages.sh")
    return found


# --- the pinned working set -------------------------------------------------------------------
def test_constraints_pin_every_dependency_and_extra_but_never_torch() -> None:
    pins = _pins()
    declared = list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        declared += extra
    for text in declared:
        name = canonicalize_name(Requirement(text).name)
        if name == "torch":
            assert name not in pins
            continue
        assert name in pins, f"{name} is declared in pyproject.toml but not pinned"
        for version, _marker in pins[name]:
            assert Requirement(text).specifier.contains(version, prereleases=True), (
                f"{name}=={version} is outside pyproject.toml's {text!r}"
            )
    assert not [n for n in pins if _NEVER_PINNED.match(n)]


def test_constraints_are_what_uv_compiles_from_pyproject(tmp_path: Path) -> None:
    """A change to pyproject.toml's ranges comes with the recompiled file. uv keeps the pins of
    the output file it is given, so this asks PyPI for metadata but moves nothing."""
    out = tmp_path / "constraints.txt"
    shutil.copyfile(CONSTRAINTS, out)
    uv = _tool("uv")
    result = subprocess.run(
        [uv, "pip", "compile", "--quiet", "pyproject.toml", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == CONSTRAINTS.read_text(encoding="utf-8"), (
        "requirements/constraints.txt is stale: run "
        "uv pip compile pyproject.toml -o requirements/constraints.txt"
    )


def test_torch_is_resolved_as_the_build_the_readme_installs() -> None:
    uv = PYPROJECT["tool"]["uv"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (pinned,) = re.findall(r"pip install (torch==[\d.]+)", readme.split("## The window")[0])[:1]
    assert uv["constraint-dependencies"] == [pinned]
    (declared,) = [m for m in uv["dependency-metadata"] if m["name"] == "torch"]
    assert f"torch=={declared['version']}" == pinned
    installed = importlib.metadata.version("torch")
    if installed.split("+")[0] != declared["version"]:
        pytest.skip(f"torch {installed} is installed here, not {declared['version']}")
    requires = [r for r in importlib.metadata.requires("torch") or [] if "extra ==" not in r]
    if "+cpu" not in installed and any(r.startswith("nvidia") for r in requires):
        pytest.skip(f"torch {installed} is a CUDA build; the metadata declares the CPU wheel's")
    assert sorted(str(Requirement(r)) for r in requires) == sorted(declared["requires-dist"])


def test_this_environment_is_the_pinned_working_set() -> None:
    """The README's commands install with the constraints: what the tests ran on is the file."""
    off = []
    for name, options in _pins().items():
        wanted = [v for v, marker in options if not marker or Marker(marker).evaluate()]
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # pinned for another platform, or an extra not installed (heif)
        if wanted and have not in wanted:
            off.append(f"{name} {have} (pinned {wanted[0]})")
    assert not off, "installed without -c requirements/constraints.txt? " + ", ".join(off)


def test_transformers_and_peft_ranges_move_together() -> None:
    """transformers checks peft's version only when a LoRA is attached, so the resolver cannot
    see the pairing: every transformers the range admits must accept every peft it admits."""
    deps = {
        canonicalize_name(Requirement(d).name): Requirement(d)
        for d in PYPROJECT["project"]["dependencies"]
    }
    assert not deps["transformers"].specifier.contains("5.24.0")  # needs peft >= 0.22.0
    assert not deps["peft"].specifier.contains("0.19.1")  # transformers 5.18-5.23 need 0.20


# --- the wheel --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("clarifier-*.whl")
    return built


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("app", "pipeline")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == found | {"clarifier_resources"}


def test_the_wheel_carries_every_resource(wheel: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "resources"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [
        p for p in tracked if "clarifier_resources/" + p.removeprefix("resources/") not in names
    ]
    assert not missing
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "resources/"))]


def test_the_installed_wheel_finds_its_resources_outside_the_tree(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = textwrap.dedent(
        """
        from pathlib import Path
        import pipeline, pipeline.models.manifest as manifest, pipeline.diffusion.sd_loading as sd
        from app.store.presets import PresetStore
        from pipeline.paths import resources_dir
        from transformers import CLIPTokenizer
        print(pipeline.__file__)
        print(resources_dir())
        print(len(manifest.load_manifest()), len(PresetStore(user_dir=Path("u")).list()))
        print(sorted(q.name for q in sd.bundled_config_dir().iterdir()))
        tokenizer = CLIPTokenizer.from_pretrained(sd.bundled_config_dir() / "tokenizer")
        print(tokenizer("a photo").input_ids)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(site), "CLARIFIER_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    module, resources, counts, sd15, ids = result.stdout.splitlines()
    assert Path(module).is_relative_to(site) and Path(resources) == site / "clarifier_resources"
    models, presets = map(int, counts.split())
    assert models > 5 and presets == len(list((ROOT / "resources" / "presets").glob("*.json")))
    assert "tokenizer" in sd15 and "unet" in sd15
    assert ids == "[49406, 320, 1125, 49407]"  # CLIP's start, "a", "photo", end


# --- the desktop ------------------------------------------------------------------------------
def test_the_desktop_entry_validates() -> None:
    entry = ROOT / "resources" / "desktop" / f"{APP_ID}.desktop"
    result = subprocess.run(
        [_tool("desktop-file-validate"), str(entry)], capture_output=True, text=True
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    text = entry.read_text(encoding="utf-8")
    assert "\nExec=clarifier %F\n" in text and f"\nIcon={APP_ID}\n" in text
    # Every type the launcher offers to open is one the engine reads.
    from pipeline.io.load import SUPPORTED_SUFFIXES

    mime = re.search(r"^MimeType=(.*)$", text, re.M)
    assert mime is not None
    assert {"image/png", "image/jpeg", "image/webp", "image/tiff"} <= set(mime[1].split(";"))
    assert {".png", ".jpg", ".webp", ".tif"} <= SUPPORTED_SUFFIXES


def test_the_appstream_metadata_validates() -> None:
    meta = ROOT / "resources" / "desktop" / f"{APP_ID}.metainfo.xml"
    result = subprocess.run(
        [_tool("appstreamcli"), "validate", "--no-net", "--pedantic", str(meta)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Only the reverse-DNS id's capital letter is remarked on (pedantic, and the id is fixed).
    remarks = [r for r in result.stdout.splitlines() if re.match(r"^[EWIP]: ", r)]
    assert all("cid-contains-uppercase-letter" in r for r in remarks), remarks
    text = meta.read_text(encoding="utf-8")
    assert f'<launchable type="desktop-id">{APP_ID}.desktop</launchable>' in text
    version = PYPROJECT["project"]["version"]
    assert f'<release version="{version}"' in text


def test_icons_ship_at_every_hicolor_size() -> None:
    from PIL import Image

    hicolor = ROOT / "resources" / "icons" / "hicolor"
    assert (hicolor / "scalable" / "apps" / f"{APP_ID}.svg").is_file()
    for size in (16, 22, 24, 32, 48, 64, 96, 128, 256, 512):
        with Image.open(hicolor / f"{size}x{size}" / "apps" / f"{APP_ID}.png") as png:
            assert png.size == (size, size) and png.mode == "RGBA"


def test_desktop_install_puts_a_valid_launcher_for_this_installation(tmp_path: Path) -> None:
    home = tmp_path / "share with space"
    command = [str(tmp_path / "bin dir" / "clarifier"), "--flag=100%"]
    written = install(home, command=command)
    assert sorted(written) == sorted(dest for _src, dest in desktop_files(home))
    entry = home / "applications" / f"{APP_ID}.desktop"
    text = entry.read_text(encoding="utf-8")
    assert f'Exec="{command[0]}" --flag=100%% %F' in text.splitlines()
    result = subprocess.run(
        [_tool("desktop-file-validate"), str(entry)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    assert (home / "icons" / "hicolor" / "48x48" / "apps" / f"{APP_ID}.png").is_file()
    assert (home / "metainfo" / f"{APP_ID}.metainfo.xml").is_file()
    assert sorted(uninstall(home)) == sorted(written)
    assert not [p for p in home.rglob(f"{APP_ID}*") if p.is_file()]
    assert uninstall(home) == []


def test_clarifier_desktop_command_uses_xdg_data_home(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "app.entry", "desktop", "install"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    entry = (tmp_path / "applications" / f"{APP_ID}.desktop").read_text(encoding="utf-8")
    exec_line = next(line for line in entry.splitlines() if line.startswith("Exec="))
    program = exec_line.removeprefix("Exec=").split(" ")[0]
    assert Path(program).is_absolute() and os.access(program, os.X_OK)
    gone = subprocess.run(
        [sys.executable, "-m", "app.entry", "desktop", "uninstall"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 0 and "Removed 13 files" in gone.stdout


# --- `clarifier FILE` opens the window ---------------------------------------------------------
def test_the_entry_knows_every_cli_command() -> None:
    from app.cli.parser import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == COMMANDS  # type: ignore[arg-type]


def test_files_and_links_open_the_window_and_commands_the_cli(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"")
    assert wants_window([]) and wants_window(["gui", "x"])
    assert wants_window([str(photo)]) and wants_window([str(tmp_path), "missing.png"])
    assert wants_window(["https://example.org/a.jpg"]) and wants_window([photo.as_uri()])
    assert not wants_window(["upscale", str(photo)]) and not wants_window(["--version"])
    assert not wants_window(["upscal", str(photo)])  # a typo gets the CLI's "invalid choice"


def test_open_with_passes_the_files_to_the_window(tmp_path: Path, monkeypatch) -> None:
    import app.ui.app
    from app.entry import main

    photo = tmp_path / "photo.png"
    photo.write_bytes(b"")
    seen: list[list[str]] = []
    monkeypatch.setattr(app.ui.app, "main", lambda argv: seen.append(list(argv)) or 0)
    assert main([str(photo), "other.jpg"]) == 0
    assert main(["gui", str(photo)]) == 0
    assert seen == [[str(photo), "other.jpg"], [str(photo)]]
