"""The import graph of amflow/ flows one way (docs/architecture.md, "Import graph"): a library imports
only its own layer and the layers below it; the stages (``amflow.stages``, one module per ``amflow``
command) sit above every library and are imported by cli.py alone, whose commands import nothing but
their stage; and no module imports, through any chain, itself. Every import counts, also one inside a
function. The graph is read by :mod:`amflow.import_graph`, which also gives each pipeline stage its code
dependencies."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

from amflow.import_graph import CLI, COMMAND_PREFIX, imported, modules
from conftest import ROOT

PACKAGE = ROOT / "amflow"
STAGES_PACKAGE = "amflow.stages"

# Libraries, lowest first: a module may import its own layer and the ones before it.
LAYERS = [
    ("base", ("amflow", "amflow.params", "amflow.params_io", "amflow.methods", "amflow.registry", "amflow.paths",
              "amflow.identity", "amflow.io", "amflow.errors", "amflow.progress", "amflow.tracking",
              "amflow.workflow_plan", "amflow.import_graph", "amflow.benchmark_file", "amflow.parallel")),
    ("data", ("amflow.data",)),
    ("camera", ("amflow.camera",)),
    ("models", ("amflow.models",)),
    ("train", ("amflow.train", "amflow.runs")),
    ("evaluate", ("amflow.evaluate",)),
    ("report", ("amflow.report", "amflow.sweep")),
    ("stages", (STAGES_PACKAGE,)),
    ("cli", (CLI,)),
]


def stages(mods) -> set[str]:
    """Every module under amflow.stages (not the package itself)."""
    return {m for m in mods if m.startswith(STAGES_PACKAGE + ".")}


def layer(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_imports.py: add it to LAYERS")
    return best[0]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: every strongly connected set of two or more modules (or one importing itself),
    sorted; Tarjan's algorithm."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, ()):
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def violations(root: Path) -> list[str]:
    mods = modules(root)
    staged = stages(mods)
    edges = {name: imported(path, set(mods)) - {name} for name, path in mods.items()}
    found = []
    for name, targets in edges.items():
        for target in sorted(targets):
            if target in staged and name != CLI:
                found.append(f"{name} imports the stage {target} (only amflow.cli may)")
            elif layer(target) > layer(name):
                found.append(f"{name} ({LAYERS[layer(name)][0]}) imports {target} ({LAYERS[layer(target)][0]}), "
                             f"a higher layer")
    found += [f"import circle: {' -> '.join(group)}" for group in circles(edges)]
    return found


def test_imports_flow_one_way():
    assert violations(ROOT) == []


def test_every_module_has_a_layer():
    for name in modules(ROOT):
        layer(name)


def test_wrong_imports_are_caught(tmp_path):
    """The check itself: a copy of the package with four wrong imports added fails on exactly those."""
    shutil.copytree(PACKAGE, tmp_path / "amflow", ignore=shutil.ignore_patterns("__pycache__"))

    def append(module: str, text: str) -> None:
        with (tmp_path / "amflow" / module).open("a") as fh:
            fh.write(text)

    append("models/inference.py", "\n\ndef _wrong():\n    from amflow.stages.tables import write_tables  # noqa: F401\n")
    append("data/clips.py", "\nfrom amflow.models import inference  # noqa: E402,F401\n")
    append("stages/report.py", "\nfrom amflow.stages import tables  # noqa: E402,F401\n")
    append("report/display.py", "\nfrom amflow.report import verdicts  # noqa: E402,F401\n")
    assert verdicts_import_display(tmp_path), "the circle below needs report.verdicts to import report.display"
    assert violations(tmp_path) == [
        "amflow.data.clips (data) imports amflow.models.inference (models), a higher layer",
        "amflow.models.inference imports the stage amflow.stages.tables (only amflow.cli may)",
        "amflow.stages.report imports the stage amflow.stages.tables (only amflow.cli may)",
        "import circle: amflow.report.display -> amflow.report.verdicts",
    ]


def verdicts_import_display(root: Path) -> bool:
    mods = modules(root)
    return "amflow.report.display" in imported(mods["amflow.report.verdicts"], set(mods))


def _commands():
    import argparse

    from amflow.cli import build_parser

    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_command_has_its_stage_module():
    """``amflow <command>`` runs ``amflow.stages.<command>`` (dashes as underscores), and every stage module
    is some command's."""
    mods = modules(ROOT)
    wanted = {f"{STAGES_PACKAGE}.{name.replace('-', '_')}" for name in _commands()}
    assert wanted - set(mods) == set()
    assert stages(mods) <= wanted


def test_a_command_imports_its_stage_and_nothing_else():
    """cli.py's ``cmd_<command>`` imports the command's stage only: the stage holds the command's work."""
    mods = modules(ROOT)
    tree = ast.parse(mods[CLI].read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith(COMMAND_PREFIX):
            command = node.name[len(COMMAND_PREFIX):]
            targets = {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom)}
            targets |= {a.name for n in ast.walk(node) if isinstance(n, ast.Import) for a in n.names}
            assert targets == {f"{STAGES_PACKAGE}.{command}"}, (node.name, targets)


# --------------------------------------------------------------------------- a stage's code
def test_every_command_runs_the_function_its_code_is_read_from():
    """amflow.import_graph finds `amflow <command>`'s own imports in cli.py's cmd_<command>."""
    from amflow.import_graph import command_function

    for name, parser in _commands().items():
        assert parser.get_default("func").__name__ == command_function(name), name


def test_a_commands_code_is_what_it_imports_and_no_more():
    from amflow.import_graph import command_files

    report, tables, train = (set(command_files(ROOT, c)) for c in ("report", "tables", "train"))
    assert {"amflow/stages/report.py", "amflow/report/report.py", "amflow/report/tables.py"} <= report  # quotes the tables
    assert "amflow/report/report.py" not in tables and "amflow/stages/report.py" not in tables
    assert not any(f.startswith("amflow/report/") for f in train), sorted(train)
    assert {f for f in train if f.startswith("amflow/stages/")} == {"amflow/stages/__init__.py", "amflow/stages/train.py"}
    assert {"amflow/stages/train.py", "amflow/stages/__init__.py", "amflow/train/training.py",
            "amflow/train/trainer.py", "amflow/evaluate/mlflow_model.py",  # lazily imported
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


def test_a_commands_code_stamp_changes_with_its_code_and_is_dated_like_its_newest_file(tmp_path):
    """The stamp a Snakemake job takes for its command's code: another name after an edit to a file the
    command imports (and the same for a command that does not import it); the newest file's time, also
    after a file is only touched or the stamps' folder is deleted."""
    import hashlib
    import os
    import shutil

    from amflow.import_graph import code_stamp, command_files

    shutil.copytree(PACKAGE, tmp_path / "amflow", ignore=shutil.ignore_patterns("__pycache__"))
    stamps = tmp_path / "stamps"
    report, train = code_stamp(tmp_path, "report", stamps), code_stamp(tmp_path, "train", stamps)
    files = command_files(tmp_path, "report")
    assert [line.split("  ")[1] for line in report.read_text().splitlines()] == files
    assert report.read_text().splitlines()[0].split("  ")[0] == hashlib.sha256(
        (tmp_path / files[0]).read_bytes()).hexdigest()
    assert report.stat().st_mtime_ns == max((tmp_path / f).stat().st_mtime_ns for f in files)

    module = tmp_path / "amflow" / "report" / "report.py"
    later = report.stat().st_mtime_ns + 10**9
    os.utime(module, ns=(later, later))  # touched only
    assert code_stamp(tmp_path, "report", stamps) == report and report.stat().st_mtime_ns == later
    module.write_text(module.read_text() + "\n# an edit\n")
    edited = code_stamp(tmp_path, "report", stamps)
    assert edited != report and edited.stat().st_mtime_ns == module.stat().st_mtime_ns
    assert code_stamp(tmp_path, "train", stamps) == train  # the training does not import the report
    shutil.rmtree(stamps)
    again = code_stamp(tmp_path, "report", stamps)
    assert again == edited and again.stat().st_mtime_ns == module.stat().st_mtime_ns
