"""The command line itself: every argument of every subcommand has help text, and --version answers."""
from __future__ import annotations

import argparse
import importlib.metadata
import re
import resource
import subprocess
import sys

import pytest

from amflow.benchmark_file import logged_cpu_s
from amflow.cli import build_parser
from conftest import ROOT


def walk(parser: argparse.ArgumentParser, path: str = "amflow"):
    """(command path, action) for every action of the parser and its subcommands."""
    for action in parser._actions:  # argparse has no public accessor for a parser's arguments
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_argument_of_every_subcommand_has_help():
    actions = list(walk(build_parser()))
    commands = {path for path, _ in actions}
    assert {"amflow predict", "amflow train", "amflow sweep", "amflow dvc-yaml"} <= commands
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in actions
               if not (a.help and a.help.strip()) or a.help == argparse.SUPPRESS]
    assert not missing, f"arguments without help text: {missing}"


def test_version():
    out = subprocess.run([sys.executable, "-m", "amflow.cli", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"amflow {importlib.metadata.version('amflow')}"


def test_predict_needs_a_run_or_a_model(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["predict", "video.mp4"])
    assert exc.value.code == 2 and "one of the arguments --run --model-uri is required" in capsys.readouterr().err


def test_every_stage_command_names_its_inputs_and_outputs(capsys):
    """The README's `amflow --help` line: the top-level help points to each stage's help, and every
    command that a Snakemake rule runs lists its inputs and outputs there."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert re.search(r"^amflow --help +# .*`amflow <stage> --help`: its inputs and outputs", readme, re.M), \
        "the README's amflow --help line"
    rules = "".join(p.read_text() for p in (root / "workflow" / "rules").glob("*.smk"))
    commands = set(re.findall(r'"(?:amflow|\{params\.launch\}) ([a-z][a-z-]+) --params', rules))
    assert {"prepare", "extract", "train", "evaluate", "tables", "report", "sweep"} <= commands
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "`amflow COMMAND --help` gives a stage's inputs and outputs" in capsys.readouterr().out
    for command in sorted(commands):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert re.search(r"^Inputs: \S", text, re.M) and re.search(r"^Outputs: \S", text, re.M), command


def test_a_command_that_succeeds_ends_with_its_cpu_seconds(tmp_path):
    """The closing line (read by the overhead share, amflow.report.timing) holds the command's CPU
    seconds: more than none, and no more than the whole process used, as the kernel counted it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "amflow.cli", "validate", "--params", "params/tiny.yaml"],
                         capture_output=True, text=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out.returncode == 0, out.stderr
    last = out.stderr.splitlines()[-1]
    assert re.fullmatch(r"amflow validate: \d+\.\d\d CPU s", last), out.stderr
    (tmp_path / "job.log").write_text(out.stdout + out.stderr)
    cpu = logged_cpu_s([tmp_path / "job.log", tmp_path / "gone.log"])
    whole = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert 0 < cpu <= whole + 0.01
    # A failing command ends with its one error line, nothing after it.
    bad = subprocess.run([sys.executable, "-m", "amflow.cli", "validate", "--params", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "CPU s" not in bad.stderr


def test_the_command_ends_without_teardown_yet_nothing_it_printed_is_lost(capsys):
    """`amflow` (cli.run) ends a successful command with os._exit, skipping the interpreter's teardown:
    what it printed, block-buffered into a pipe, arrives whole, the same as the in-process command's."""
    from amflow.cli import main

    argv = ["validate", "--params", "params/tiny.yaml", "--show"]
    out = subprocess.run([sys.executable, "-m", "amflow.cli", *argv], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert len(printed.splitlines()) > 50 and out.stdout == printed
    # a failure exits the usual way, with its status
    bad = subprocess.run([sys.executable, "-m", "amflow.cli", "validate", "--params", "no-such.yaml"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr == "error: no-such.yaml: params file not found\n"
