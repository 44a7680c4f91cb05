"""The import graph of the ``amflow`` package, read from its source (nothing is imported).

One parser serves three readers: the layering test (tests/test_imports.py), and the code dependencies of
the pipeline's stages, which the Snakemake rules take as inputs (``workflow/rules/common.smk``) and
``amflow dvc-yaml`` writes as DVC deps. A stage's code is the set of source files its command
``amflow <command>`` can import: ``amflow/cli.py`` with what it imports at module level and in every
function but the other commands' ``cmd_*``, then everything those import, transitively (an import
inside a function counts too), with the ``__init__.py`` of every package on the way.

A Snakemake job takes its command's code as one input, :func:`code_stamp`, which stands for those files.
"""
from __future__ import annotations

import ast
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from amflow import io

PACKAGE = "amflow"
CLI = f"{PACKAGE}.cli"
COMMAND_PREFIX = "cmd_"


def module_name(path: Path, root: Path) -> str:
    """``amflow.x.y`` of the file ``root/amflow/x/y.py`` (a package's ``__init__.py`` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root`` (the folder that holds ``amflow/``), by name."""
    return {module_name(p, root): p for p in sorted((Path(root) / PACKAGE).rglob("*.py"))}


def _walk_run_time(node: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:``, which never run (an annotation's import)."""
    todo = [node]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports_in(nodes, known: set[str]) -> set[str]:
    """The amflow modules that the statements ``nodes`` (and everything nested in them) import
    (``from amflow.x import y`` counts as amflow.x.y when that is a module, else as amflow.x)."""
    out = set()
    for top in nodes:
        for node in _walk_run_time(top):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    out.add(sub if sub in known else node.module)
    return out


def _parse(path: Path) -> ast.Module:
    return ast.parse(Path(path).read_text(), str(path))


def imported(path: Path, known: set[str]) -> set[str]:
    """The amflow modules the file ``path`` imports, anywhere in it."""
    return _imports_in([_parse(path)], known)


def _with_packages(names: set[str]) -> set[str]:
    """``names`` and every package above them: importing a submodule runs its packages' ``__init__.py`` first."""
    out = set()
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return out


@lru_cache(maxsize=8)
def _graph(root: Path) -> tuple[dict[str, Path], dict[str, frozenset[str]]]:
    mods = modules(root)
    known = set(mods)
    return mods, {name: frozenset(_with_packages(imported(path, known)) - {name}) for name, path in mods.items()}


def closure(root: Path, start: set[str], opaque: frozenset[str] = frozenset()) -> set[str]:
    """``start`` and every amflow module they import, transitively; the imports of an ``opaque`` module
    are not followed (the CLI: only the command's own imports run)."""
    mods, edges = _graph(Path(root).resolve())
    seen, todo = set(), list(_with_packages(set(start)))
    while todo:
        name = todo.pop()
        if name in seen or name not in mods:
            continue
        seen.add(name)
        if name not in opaque:
            todo.extend(edges[name])
    return seen


def command_function(command: str) -> str:
    """The function of ``amflow.cli`` that runs ``amflow <command>`` (``camera-motion`` -> ``cmd_camera_motion``)."""
    return COMMAND_PREFIX + command.replace("-", "_")


def command_modules(root: Path, command: str) -> set[str]:
    """The modules ``amflow <command>`` can import (see the module docstring)."""
    root = Path(root).resolve()
    mods, _ = _graph(root)
    tree = _parse(mods[CLI])
    wanted = command_function(command)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    if wanted not in functions:
        raise KeyError(f"amflow/cli.py has no function {wanted} for the command `amflow {command}`")
    # Everything that runs whatever the command: module level, the parser and the helpers.
    shared = [node for node in tree.body
              if not (isinstance(node, ast.FunctionDef) and node.name.startswith(COMMAND_PREFIX))]
    start = {CLI} | _imports_in(shared + [functions[wanted]], set(mods))
    return closure(root, start, opaque=frozenset({CLI}))


def command_files(root: Path, command: str) -> list[str]:
    """The source files of ``amflow <command>``, relative to ``root`` (``amflow/cli.py``, ...), sorted."""
    root = Path(root).resolve()
    mods, _ = _graph(root)
    return sorted(mods[name].relative_to(root).as_posix() for name in command_modules(root, command))


def code_stamp(root: Path, command: str, folder: Path) -> Path:
    """One file in ``folder`` that stands for the source files of ``amflow <command>`` as a Snakemake job's
    input, so the job reruns when Snakemake would rerun it for those files themselves:

    - its name holds a digest of their paths and contents, so another set of files or an edit gives another
      name (Snakemake's "input" trigger: the set of input files changed);
    - its modification time is the newest of theirs (Snakemake's "mtime" trigger: an input is newer than
      the outputs), set again whenever the workflow is read, so a deleted ``.snakemake/`` reruns nothing.

    It lists the files with their sha256. One input where there were about 75: Snakemake's scheduler reads
    the size of every input of every waiting job about once a second, which cost the default run about 40 CPU
    seconds (two fifths of Snakemake's own).
    """
    root = Path(root).resolve()
    files = command_files(root, command)
    lines = [f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in files]
    text = "".join(lines)
    path = Path(folder) / f"{command}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.sha256"
    if not path.is_file() or path.read_text() != text:
        io.write_text(path, text)
    newest = max((root / f).stat().st_mtime_ns for f in files)
    if path.stat().st_mtime_ns != newest:
        os.utime(path, ns=(newest, newest))
    return path
