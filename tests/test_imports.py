"""The import graph of amflow/ flows one way (docs/architecture.md, "Import graph"): a library imports
only its own layer and the layers below it, and stage modules, which `amflow <command>` runs, are
imported by cli.py alone. Every import counts, also one inside a function. The graph is read by
:mod:`amflow.import_graph`, which also gives each pipeline stage its code dependencies."""
from __future__ import annotations

from pathlib import Path

import pytest

from amflow.import_graph import imported, modules
from conftest import ROOT

PACKAGE = ROOT / "amflow"

# Libraries, lowest first: a module may import its own layer and the ones before it.
LAYERS = [
    ("base", ("amflow", "amflow.params", "amflow.params_io", "amflow.methods", "amflow.registry", "amflow.paths",
              "amflow.identity", "amflow.io", "amflow.errors", "amflow.progress", "amflow.tracking",
              "amflow.workflow_plan", "amflow.import_graph")),
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


# --------------------------------------------------------------------------- a stage's code
def test_every_command_runs_the_function_its_code_is_read_from():
    """amflow.import_graph finds `amflow <command>`'s own imports in cli.py's cmd_<command>."""
    import argparse

    from amflow.cli import build_parser
    from amflow.import_graph import command_function

    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in sub.choices.items():
        assert parser.get_default("func").__name__ == command_function(name), name


def test_a_commands_code_is_what_it_imports_and_no_more():
    from amflow.import_graph import command_files

    report, tables, train = (set(command_files(ROOT, c)) for c in ("report", "tables", "train"))
    assert "amflow/report/report.py" in report and "amflow/report/tables.py" in report  # the report quotes the tables
    assert "amflow/report/report.py" not in tables
    assert not any(f.startswith("amflow/report/") for f in train), sorted(train)
    assert {"amflow/train/run.py", "amflow/train/trainer.py", "amflow/evaluate/mlflow_model.py",  # lazily imported
            "amflow/__init__.py", "amflow/train/__init__.py", "amflow/cli.py"} <= train
    assert all((ROOT / f).is_file() for f in report | train)


def test_an_import_inside_a_function_counts_for_its_command_only(tmp_path):
    """A new module imported lazily by the report stage is the report's code, not the training's."""
    import shutil

    from amflow.import_graph import command_files

    shutil.copytree(PACKAGE, tmp_path / "amflow", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "amflow" / "report" / "extra.py").write_text("VALUE = 1\n")
    with (tmp_path / "amflow" / "report" / "report.py").open("a") as fh:
        fh.write("\n\ndef _later():\n    from amflow.report.extra import VALUE  # noqa: F401\n")
    assert "amflow/report/extra.py" in command_files(tmp_path, "report")
    assert "amflow/report/extra.py" not in command_files(tmp_path, "train")
    assert "amflow/report/extra.py" not in command_files(ROOT, "report")
