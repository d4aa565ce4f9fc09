"""Imports point down the layers, never up: every ``import`` and ``from ... import`` of the project's own
modules (top-level and inside functions alike) is read with ast and checked against the map below.

The layers, lowest first (README, "The code, layer by layer"): what a module may use is its own layer and
those below it. A new module is placed by its folder; a new folder must be added here, which is the point.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = [
    ("ground", ["src/__init__.py", "src/config.py", "src/paths.py", "src/io_utils.py", "src/locks.py",
                "src/metric.py", "src/registry.py", "src/runs.py"]),
    ("synthetic data", ["src/synth/"]),
    ("data", ["src/data/"]),
    ("models and tasks", ["src/models/", "src/tasks/", "src/localisation/"]),
    ("training", ["src/training/"]),
    ("stages", ["src/localisation/build.py", "src/folds.py", "src/ensembling/"]),
    ("inference", ["src/inference/"]),
    ("reporting", ["src/reporting/"]),
    ("packaging", ["src/packaging/"]),
    ("commands", ["src/train.py", "src/prepare.py", "src/localise.py", "src/ensemble.py", "src/report.py",
                  "src/score.py", "src/synthesise.py", "src/synthetic_figure.py", "src/explain.py", "src/dashboard.py",
                  "src/kaggle.py", "infer.py"]),
]


def layer_of(relative: str) -> int | None:
    """The layer of a file: the entry with the longest matching path wins (a file beats its folder)."""
    best = None
    for index, (_, paths) in enumerate(LAYERS):
        for path in paths:
            if relative == path or (path.endswith("/") and relative.startswith(path)):
                if best is None or len(path) > best[1]:
                    best = (index, len(path))
    return None if best is None else best[0]


def module_file(module: str) -> str | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return str(candidate.relative_to(ROOT))
    return None


def imported_modules(path: Path) -> list[str]:
    """Every module an import statement of ``path`` names, relative imports resolved (``from .x import y``
    also yields ``pkg.x.y``, in case ``y`` is a module)."""
    package = list(path.relative_to(ROOT).parts[:-1])  # what a relative import of level 1 starts from
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [m for m in found if m == "src" or m.startswith("src.")]


def project_files() -> list[Path]:
    return sorted(ROOT.glob("src/**/*.py")) + [ROOT / "infer.py"]


def test_every_module_has_a_layer():
    assert [str(p.relative_to(ROOT)) for p in project_files() if layer_of(str(p.relative_to(ROOT))) is None] == []


def upward_imports() -> list[str]:
    found = []
    for path in project_files():
        relative = str(path.relative_to(ROOT))
        own = layer_of(relative)
        for module in imported_modules(path):
            target = module_file(module)
            if target is None or target == relative:
                continue
            other = layer_of(target)
            if other is not None and other > own:
                found.append(f"{relative} ({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")
    return sorted(set(found))


def test_imports_point_down_the_layers():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import():
    """The checker itself can fail: a data module importing the training loop is caught."""
    fake = ROOT / "src" / "data" / "_layer_probe.py"
    fake.write_text("def late():\n    from ..training import loop\n")
    try:
        assert "src/data/_layer_probe.py (data) imports src/training/loop.py (training)" in upward_imports()
    finally:
        fake.unlink()


@pytest.mark.parametrize("relative, layer", [("src/localisation/build.py", "stages"),
                                             ("src/localisation/predict.py", "models and tasks")])
def test_a_file_entry_beats_its_folder(relative, layer):
    assert LAYERS[layer_of(relative)][0] == layer


def test_commands_live_in_one_place():
    """The rule for commands (README): each is ``src/<name>.py``, run as ``python -m src.<name>`` (infer.py
    at the top, for Kaggle notebooks); no package has a ``__main__``."""
    commands = dict(LAYERS)["commands"]
    assert [c for c in commands if c != "infer.py" and not (c.startswith("src/") and c.count("/") == 1)] == []
    assert sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("src/**/__main__.py")) == []
