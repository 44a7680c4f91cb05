"""The command line itself: every argument of every subcommand has help text, and --version answers."""
from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys

import pytest

from amflow.cli import build_parser


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
