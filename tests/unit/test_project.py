"""Project rules the tests enforce: layout, lint, import contracts, torch kept out of the app."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the dev extras: pip install -e '.[dev]'")
    return found


def test_top_level_layout_is_exactly_the_agreed_one() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    top = {path.split("/")[0] for path in tracked}
    allowed = {
        "pyproject.toml",
        "app",
        "pipeline",
        "resources",
        "packaging",
        "requirements",
        "tests",
        "README.md",
        "ARCHITECTURE.md",
        "CONTRIBUTING.md",
        "CHANGELOG.md",
        ".ci",
    }
    extra = {name for name in top - allowed if not name.startswith(".")}
    assert not extra, f"unexpected top-level entries: {sorted(extra)}"
    assert allowed - {".ci"} <= top | {"packaging"}


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = [line for line in ci.splitlines() if "python3 -m venv" in line]
    assert len(command) == 1
    assert command[0] in (ROOT / "README.md").read_text()


def test_ruff_lint_and_format_are_clean() -> None:
    ruff = _tool("ruff")
    lint = subprocess.run(
        [ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [ruff, "format", "--no-cache", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_pyright_finds_no_errors() -> None:
    """Standard mode over app and pipeline ([tool.pyright] in pyproject.toml)."""
    result = subprocess.run(
        # --project: this checkout's config, never a pyrightconfig.json in a folder above it
        [_tool("pyright"), "--project", str(ROOT), "--pythonpath", sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    assert re.search(r"\b0 errors\b", result.stdout), result.stdout[-2000:]


def test_import_contracts_hold() -> None:
    result = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", result.stdout), result.stdout


def test_app_imports_no_private_pipeline_module() -> None:
    """The engine's private modules (``pipeline.io._exif``, ...) may change without notice;
    app uses only the public ones. Lazy imports inside functions count too."""
    import grimp

    graph = grimp.build_graph("app", "pipeline", cache_dir=None)
    private = sorted(
        f"{importer} imports {imported}"
        for importer in graph.modules
        if importer.split(".")[0] == "app"
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.split(".")[0] == "pipeline"
        and any(part.startswith("_") and part != "__main__" for part in imported.split("."))
    )
    assert not private, private


@pytest.mark.parametrize("package", ["pipeline", "app"])
def test_no_runtime_import_cycle(package: str) -> None:
    import grimp  # import-linter's engine, installed with it

    # A lazy import inside a function runs too, so it counts; one under `if TYPE_CHECKING:`
    # never runs, so a cycle made only of those is allowed.
    graph = grimp.build_graph(package, exclude_type_checking_imports=True, cache_dir=None)
    cycles = sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.find_shortest_chain(importer=imported, imported=importer)
    )
    assert not cycles, cycles


@pytest.mark.parametrize(
    "modules",
    [
        [
            "pipeline",
            "pipeline.params",
            "pipeline.metadata",
            "pipeline.protocol",
            "pipeline.progress",
        ],
        [
            "pipeline.diffusion.tiling",
            "pipeline.diffusion.prompt_syntax",
            "pipeline.models.store",
            "pipeline.io",
        ],
        ["app.cli", "app.cli.models", "app.jobs", "app.backends.local", "app.store.presets"],
    ],
)
def test_these_modules_never_import_torch(modules: list[str]) -> None:
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "bad = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_qasync_is_imported_in_at_most_one_module() -> None:
    users = [
        p
        for p in (ROOT / "app").rglob("*.py")
        if re.search(r"^\s*(import qasync|from qasync)", p.read_text(), re.M)
    ]
    assert len(users) <= 1, users
