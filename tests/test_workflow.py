"""The DAG definitions: dvc.yaml is generated from the Snakemake workflow, and the CLI explains itself."""
import os
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


def _dry_run_jobs(*args):
    import re

    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-F", "-d", str(ROOT), "-s", str(ROOT / "Snakefile"),
                          *args], cwd=ROOT, capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"})
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out.stdout + out.stderr):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        res = re.search(r"^\s+resources: (.+)$", block, flags=re.M)
        if m:
            jobs.append((m.group(1), dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}))
    return jobs


def test_gpu_jobs_declare_their_gpu_so_a_local_gpu_run_gives_each_its_own():
    """`snakemake --profile workflow/profiles/local_gpu ... --configfile params/k400.yaml` (README): every
    training and evaluation declares one GPU and the profile states one, so they run one at a time
    instead of all together on cuda:0; a params file that trains on the CPU declares none."""
    jobs = _dry_run_jobs("--profile", "workflow/profiles/local_gpu", "results/table1.csv",
                         "--configfile", "params/k400.yaml")
    gpu_rules = [(rule, res) for rule, res in jobs if rule in ("train", "evaluate")]
    assert len(gpu_rules) == 10  # 5 methods x (train, evaluate) on k400
    assert all(res.get("gpu") == "1" for _, res in gpu_rules), gpu_rules
    assert all(res.get("gpu", "0") == "0" for rule, res in jobs if rule not in ("train", "evaluate")), jobs
    pretrain = _dry_run_jobs("--profile", "workflow/profiles/local_gpu", "results/backbone/metrics.json",
                             "--configfile", "params/synth_full.yaml")
    assert [res.get("gpu") for rule, res in pretrain if rule == "pretrain_backbone"] == ["1"]
    cpu_jobs = _dry_run_jobs("--cores", "2", "results/table1.csv", "--configfile", "params/tiny.yaml")
    assert all(res.get("gpu", "0") == "0" for _, res in cpu_jobs), cpu_jobs
