"""The import graph of amflow/ flows one way (docs/architecture.md, "Import graph"): a library imports
only its own layer and the layers below it, and stage modules, which `amflow <command>` runs, are
imported by cli.py alone. Every import counts, also one inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "amflow"

# Libraries, lowest first: a module may import its own layer and the ones before it.
LAYERS = [
    ("base", ("amflow", "amflow.params", "amflow.paths", "amflow.io", "amflow.errors", "amflow.progress",
              "amflow.tracking", "amflow.workflow_plan")),
    ("data", ("amflow.data",)),
    ("camera", ("amflow.camera",)),
    ("models", ("amflow.models",)),
    ("train", ("amflow.train", "amflow.runs")),
    ("evaluate", ("amflow.evaluate",)),
    ("report", ("amflow.report", "amflow.localise", "amflow.sweep")),
    ("stages", ()),
    ("cli", ("amflow.cli", "amflow.dag")),
]
# The modules whose entry point a CLI command runs. They sit above every library (they may use any),
# and only cli.py imports them.
STAGES = {
    "amflow.data.prepare", "amflow.data.extract", "amflow.camera.stage", "amflow.train.pretrain_backbone",
    "amflow.train.run", "amflow.evaluate.run", "amflow.report.tables", "amflow.report.heatmaps",
    "amflow.report.report", "amflow.report.readme", "amflow.localise", "amflow.sweep.run",
}
# Imports of a stage by another module, each with its reason. One that no longer exists fails the test,
# so the list only shrinks.
ALLOWED = {
    ("amflow.sweep.run", "amflow.train.run"): "a sweep trial is one training run, with the pruner's callback",
    ("amflow.report.report", "amflow.report.tables"): "the report quotes the tables, read with their readers",
    ("amflow.report.readme", "amflow.report.report"): "the README states the claims in the report's words",
    ("amflow.report.readme", "amflow.report.tables"): "the README quotes table 1, read with its reader",
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "amflow").rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The amflow modules ``path`` imports (``from amflow.x import y`` counts as amflow.x.y when that is
    a module, else as amflow.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "amflow"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "amflow":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def layer(module: str) -> int:
    if module in STAGES:
        return next(i for i, (name, _) in enumerate(LAYERS) if name == "stages")
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_imports.py: add it to LAYERS")
    return best[0]


def violations(root: Path) -> list[str]:
    mods = modules(root)
    found, used = [], set()
    for name, path in mods.items():
        for target in sorted(imported(path, set(mods)) - {name}):
            if target in STAGES and name != "amflow.cli":
                if (name, target) in ALLOWED:
                    used.add((name, target))
                    continue
                found.append(f"{name} imports the stage {target} (only amflow.cli may)")
            elif layer(target) > layer(name):
                found.append(f"{name} ({LAYERS[layer(name)][0]}) imports {target} ({LAYERS[layer(target)][0]}), "
                             f"a higher layer")
    found += [f"ALLOWED lists {a} -> {b}, which is no longer imported: remove it"
              for a, b in sorted(set(ALLOWED) - used)]
    return found


def test_imports_flow_one_way():
    assert violations(ROOT) == []


def test_every_module_has_a_layer():
    for name in modules(ROOT):
        layer(name)


def test_a_library_importing_a_stage_or_a_higher_layer_is_caught(tmp_path):
    """The check itself: a copy of the package with two wrong imports added fails on exactly those."""
    import shutil

    shutil.copytree(PACKAGE, tmp_path / "amflow")
    with (tmp_path / "amflow" / "models" / "inference.py").open("a") as fh:
        fh.write("\n\ndef _wrong():\n    from amflow.evaluate.run import score  # noqa: F401\n")
    with (tmp_path / "amflow" / "data" / "clips.py").open("a") as fh:
        fh.write("\nfrom amflow.models import inference  # noqa: E402,F401\n")
    assert violations(tmp_path) == [
        "amflow.data.clips (data) imports amflow.models.inference (models), a higher layer",
        "amflow.models.inference imports the stage amflow.evaluate.run (only amflow.cli may)",
    ]


@pytest.mark.parametrize("module", sorted(STAGES))
def test_stages_exist(module):
    assert module in modules(ROOT)
