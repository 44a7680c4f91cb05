"""``make gpu-check`` (bench/gpu_check.py) on its CPU path: no CUDA -> one line and exit 2; argument
handling; the tiny-size run (every check but the synth_full training) and its report files; the
shortened synth_full params file and the Snakemake run it plans."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_cuda_it_says_so_in_one_line_and_fails():
    venv = Path(sys.prefix)  # the environment running the tests; -o: never (re)install it from here
    proc = subprocess.run(["make", "-o", str(venv / ".installed"), "gpu-check", f"VENV={venv}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gpu-check:")]
    assert len(lines) == 1 and "no usable CUDA device" in lines[0] and "torch" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    direct = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", "/nonexistent"],
                            capture_output=True, text=True, timeout=300)
    assert direct.returncode == 2 and direct.stdout == "" and len(direct.stderr.strip().splitlines()) == 1


def test_arguments():
    args = gpu_check.parse_args([])
    assert (args.device, args.size, args.batch, args.skip) == ("cuda", "vitb", 8, [])
    assert gpu_check.parse_args(["--size", "tiny"]).batch == 2
    for bad in (["--batch", "0"], ["--skip", "everything"], ["--size", "huge"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as exit_:
            gpu_check.parse_args(bad)
        assert exit_.value.code == 2


@pytest.mark.slow
def test_tiny_cpu_run_writes_the_report(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--size", "tiny",
                           "--skip", "synth", "--steps", "1", "--repeats", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and report["size"] == "tiny" and report["device"]["type"] == "cpu"
    assert set(report["checks"]) == {"bf16", "speed", "ddp"}
    names = ["frame", "aim", "st_adapter", "tpa", "amflow/static", "amflow/aligned"]
    bf16 = report["checks"]["bf16"]["methods"]
    assert [r["method"] for r in bf16] == names
    for r in bf16:
        assert r["loss_rel_diff"] == pytest.approx(abs(r["loss_bf16"] - r["loss_fp32"]) / abs(r["loss_fp32"]))
        assert r["ok"] == (r["loss_rel_diff"] <= gpu_check.BF16_LOSS_RTOL and r["grad_cosine"] >= gpu_check.BF16_GRAD_COS)
        assert len(r["bf16_step_losses"]) == 1
    speed = report["checks"]["speed"]
    by = {r["method"]: r for r in speed["methods"]}
    assert list(by) == names
    assert speed["amflow_over_aim_step"] == pytest.approx(by["amflow/static"]["step_s"] / by["aim"]["step_s"])
    for r in by.values():
        assert r["clips_per_s"] == pytest.approx(2 / r["step_s"]) and r["peak_mib"] > 0
        assert (r["am_flow_share"] is not None) == r["method"].startswith("amflow")
    ddp = report["checks"]["ddp"]
    assert ddp["procs"] == 2 and len(ddp["single"]) == len(ddp["ddp"]) == 2
    assert ddp["max_rel_diff"] == pytest.approx(max(abs(a - b) / abs(a) for a, b in zip(ddp["single"], ddp["ddp"])))
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Overall: **passed**" in md and "| amflow/aligned |" in md and "2 processes" in md
    assert f"{speed['amflow_over_aim_step']:.2f}x" in md


def test_shortened_synth_full_params_and_the_run_they_plan(tmp_path):
    from amflow.params_io import load_params

    path = gpu_check.synth_params(tmp_path, epochs=3)
    p = load_params(path)
    full = load_params(ROOT / "params" / "synth_full.yaml")
    assert p.train.epochs == 3 and p.methods == ["tpa", "amflow"] and p.table_datasets == ["synth_moving"]
    assert p.datasets["synth_moving"].synth.split_sizes["train"] < full.datasets["synth_moving"].synth.split_sizes["train"]
    assert p.pretrain_images.images < full.pretrain_images.images and p.train.device == "cuda"
    assert p.sampling == full.sampling and p.model == full.model and p.backbone == full.backbone
    targets = [str(gpu_check.synth_metrics_file(m)) for m in ("tpa", "amflow")]
    assert targets[0] == "results/synth_full_gpu_check/synth_moving/tpa/seed0/metrics.json"
    out = subprocess.run([sys.executable, "-m", "snakemake", *targets, "-n", "-s", str(ROOT / "Snakefile"), "-d",
                          str(tmp_path), "--cores", "2", "--configfile", str(path), "--resources", "gpu=1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    for rule in ("prepare_dataset", "extract_frames", "camera_motion", "pretrain_images", "pretrain_backbone",
                 "train", "evaluate"):
        assert f"rule {rule}:" in text or f"localrule {rule}:" in text, rule
