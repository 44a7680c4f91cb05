"""The DAG definitions: dvc.yaml is generated from the Snakemake workflow, and the CLI explains itself."""
import subprocess
import sys
from pathlib import Path

import pytest

from amflow.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_matches_snakemake_workflow(monkeypatch):
    from amflow.dag import build_dvc_yaml

    monkeypatch.chdir(ROOT)
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == build_dvc_yaml(), "dvc.yaml is stale: run `amflow dvc-yaml` and commit it"


def test_dvc_yaml_stages_cover_the_pipeline(monkeypatch):
    import yaml

    monkeypatch.chdir(ROOT)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    rules = {name.split("--")[0] for name in stages}
    assert {"prepare_dataset", "extract_frames", "camera_motion", "pretrain_backbone", "train", "evaluate",
            "table1", "ablations", "report"} <= rules
    # Every dep is either produced by another stage or is source code: the DAG is closed.
    produced = set()
    for st in stages.values():
        for key in ("outs", "metrics", "plots"):
            for out in st.get(key, []):
                produced.add(next(iter(out)) if isinstance(out, dict) else out)
    for name, st in stages.items():
        for dep in st["deps"]:
            assert dep in produced or dep == "amflow", f"{name}: dep {dep} is produced by no stage"


def test_snakemake_dry_run_plans_the_table(tmp_path):
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-F", "--cores", "2", "-d", str(ROOT),
                          "-s", str(ROOT / "Snakefile"), "results/table1.csv"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    for rule in ("prepare_dataset", "extract_frames", "camera_motion", "pretrain_backbone", "train", "evaluate",
                 "table1"):
        assert rule in text


def test_snakemake_dry_run_plans_the_localisation():
    """The README's localisation target: ground truth from the plans, then `amflow localise`."""
    target = "results/synth_moving/localisation/localisation.csv"
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "-F", "--cores", "2", "-d", str(ROOT),
                          "-s", str(ROOT / "Snakefile"), target], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert target in (ROOT / "README.md").read_text()
    stats = {line.split()[0] for line in text.split("Job stats")[-1].splitlines() if line.strip()}
    assert {"prepare_dataset", "extract_frames", "camera_motion", "pretrain_backbone", "ground_truth",
            "localise"} <= stats, stats
    assert "amflow localise --params params/default.yaml --dataset synth_moving" in text


SUBCOMMANDS = [a.dest for a in build_parser()._subparsers._group_actions[0]._choices_actions]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert len(text) > 200 and "usage: amflow" in text


def test_bad_params_file_exits_with_clear_error(tmp_path, capsys):
    from amflow.cli import main

    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\ndatasets: {}\ntable_datasets: []\ntrain: {epochs: 0}\n")
    assert main(["validate", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "train.epochs" in err
