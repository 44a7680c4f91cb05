"""End to end: the whole DAG on the shipped tiny config, in a temporary copy of the project.

One pipeline run (``snakemake --cores 2 report --configfile params/tiny.yaml`` from an empty
``results/``, shared with the DVC and SLURM tests through :func:`project_copy.shared_pipeline_run`)
serves every check here: every expected file exists, a second dry run has nothing to do, the tables
hold the numbers of the ``metrics.json`` they come from, the report holds the tables' numbers,
``amflow predict`` answers, Snakemake's ``--report`` holds the tables and figures, a ``--config``
override reaches the jobs, and a second params file (the default) would overwrite nothing.

Also here, because they need no pipeline run, on the shipped files as a user types them: ``snakemake
--lint`` is clean but for the lints the project does not satisfy on purpose (:data:`ACCEPTED_LINTS`);
``snakemake -n`` plans table 1 of the default; ``--dag`` and ``--rulegraph`` need no ``--cores``;
``--configfile`` takes a complete params file or one that extends another, and ``--config`` values
reach the params file the jobs read.
"""
from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pandas as pd
import pytest
import yaml

from amflow import paths

from project_copy import (BIN, ROOT, TINY, TINY_RESULTS, copy_of, job_counts, make_project_copy, nothing_to_do, run,
                          shared_pipeline_run, snakemake)
from table_columns import ABLATION_COLUMNS, TABLE1_COLUMNS

DECIMALS = {"top1_pct": 2, "top5_pct": 2, "mean_class_acc_pct": 2, "reversed_top1_pct": 2,
            "forward_top1_paired_pct": 2, "both_directions_top1_pct": 2, "epochs_to_90pct": 2, "train_time_s": 1}

# Lints the project does not satisfy, with the reason (anything else fails the test; the README says why):
ACCEPTED_LINTS = {
    # The software is one pip environment pinned in pyproject.toml (`make install`), used by every rule;
    # a conda env file would be a second, untested place for the pins, and no container image exists.
    "Specify a conda environment or container for each rule.",
}

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return shared_pipeline_run(tmp_path_factory)


@pytest.fixture(scope="module")
def params(project):
    from amflow.params_io import load_params

    return load_params(project / "params" / "tiny.yaml")


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def metrics_of(path: Path) -> dict:
    return json.loads(path.read_text())


def pct(fraction) -> str:
    return "" if fraction is None else f"{100.0 * float(fraction):.2f}"


def assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 10 and height > 10, f"{path}: {width}x{height}"


# --------------------------------------------------------------------------- files
@pytest.mark.slow
def test_pipeline_writes_every_expected_file(project, params):
    from amflow.workflow_plan import AXES, ablation_runs, table_runs

    r = project / TINY_RESULTS
    expected = [r / "table1.csv", r / "ablations.csv", r / "report.md",
                r / "backbone" / "backbone.safetensors", r / "backbone" / "metrics.json"]
    axes = [a for a in AXES if any(run.axis == a for run in ablation_runs(params))]
    assert axes == list(AXES), "the tiny config is meant to exercise every ablation axis"
    expected += [r / f"ablation_{axis}.csv" for axis in axes]
    for dataset in params.table_datasets:
        expected += [r / dataset / "camera_motion.json", r / dataset / "camera_motion.png", r / dataset / "motion.npz"]
    run_dirs = [r / d / m / f"seed{s}" for d, m, s in table_runs(params)]
    run_dirs += [r / "ablations" / a.axis / a.value / a.dataset / f"seed{a.seed}" for a in ablation_runs(params)]
    for run_dir in run_dirs:
        expected += [run_dir / name for name in ("train.json", "metrics.json", "checkpoint.pt", "params.yaml",
                                                 "train_log.csv", "per_class.csv", "confusion.png", "curves.png",
                                                 "scores.json", "predictions.csv")]
    plots = ["accuracy.png", "convergence.png", "amflow_heatmaps.png", "amflow_heatmaps.gif", "amflow_heatmaps.json"]
    expected += [r / "plots" / name for name in plots]
    missing = [str(p.relative_to(project)) for p in expected if not p.is_file() or p.stat().st_size == 0]
    assert not missing, f"missing or empty: {missing}"

    for png in [p for p in expected if p.suffix == ".png"]:
        assert_png(png)
    assert (r / "plots" / "amflow_heatmaps.gif").read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    for dataset in params.table_datasets:
        cam = metrics_of(r / dataset / "camera_motion.json")
        assert cam["dataset"] == dataset and cam["decision"] in ("static", "aligned")
    backbone = metrics_of(r / "backbone" / "metrics.json")
    assert "mean_accuracy" in backbone and 0.0 <= backbone["mean_accuracy"] <= 1.0
    for run_dir in run_dirs:
        m = metrics_of(run_dir / "metrics.json")
        assert 0.0 <= m["top1"] <= m["top5"] <= 1.0, run_dir
        assert m["epochs"] == params.train.epochs == len(m["val_curve"]), run_dir
        log = pd.read_csv(run_dir / "train_log.csv")
        assert list(log["epoch"]) == list(range(1, params.train.epochs + 1)), run_dir


@pytest.mark.slow
def test_second_dry_run_has_nothing_to_do(project):
    out = snakemake(project, "-n", "--cores", "2", "report", *TINY)
    assert nothing_to_do(out), out.stdout[-3000:]


@pytest.mark.slow
def test_the_run_records_its_whole_cpu_beside_its_log(project):
    """The Snakefile's onsuccess writes the whole run's CPU seconds beside its log: Snakemake's own and
    its children's, which hold every job's command (their closing lines) and more (shells, exits), as the
    kernel counted them for this process tree; bench/bench_pipeline.py then gives both overhead shares."""
    from amflow.benchmark_file import logged_cpu_s
    from amflow.report import timing

    logs = sorted((project / ".snakemake" / "log").glob("*.snakemake.log"))
    recorded = [log for log in logs if Path(f"{log}.cpu.json").is_file()]
    assert recorded, f"no <log>.cpu.json beside {[log.name for log in logs]}"
    first = recorded[0]  # the shared run's (a dry run records nothing)
    record = json.loads(Path(f"{first}.cpu.json").read_text())
    _, jobs = timing.parse_log(first)
    commands = sum(logged_cpu_s([project / log for log in j.logs]) or 0 for j in jobs)
    assert record["snakemake_cpu_s"] > 0 and record["children_cpu_s"] >= commands > 0
    out = run([BIN / "python", ROOT / "bench" / "bench_pipeline.py", "--log", first], project)
    assert re.search(r"in the jobs' commands; \d+ of \d+ CPU s \(\d+%\) in the whole run", out.stdout), out.stdout


@pytest.mark.slow
def test_every_job_held_no_more_memory_than_its_rule_declares(project):
    """A rule's ``resources: mem_mb`` is what a local run's memory limit counts (workflow/rules/common.smk):
    every job of the run held at most that much, by its benchmark file's max_rss (the peak memory of the
    job's processes together, in MiB as Snakemake samples it; mem_mib is the declared figure in MiB)."""
    from amflow.report.timing import read_benchmark

    logs = sorted((project / ".snakemake" / "log").glob("*.snakemake.log"))
    first = next(log for log in logs if Path(f"{log}.cpu.json").is_file())  # the shared run's
    checked = []
    for block in re.split(r"\n(?=\[)", first.read_text()):
        bench = re.search(r"^    benchmark: (.+)$", block, re.M)
        if not bench:
            continue
        declared = re.search(r"^    resources: .*\bmem_mib=(\d+)", block, re.M)
        assert declared, f"no mem_mb declared:\n{block}"
        held = read_benchmark(project / bench.group(1))["max_rss"]
        if held is None:  # ended before Snakemake's first sample
            continue
        assert held <= int(declared.group(1)), (bench.group(1), held, declared.group(1))
        checked.append(bench.group(1))
    assert len(checked) >= 20, checked


def plan_with(project: Path, values: str, target: str):
    """The dry run of ``target`` with a params file that extends tiny.yaml (so shares its name, its
    results folder) by ``values`` (YAML)."""
    extra = project / "params" / "extended.yaml"
    extra.write_text(f"extends: tiny.yaml\n{values}\n")
    try:
        return snakemake(project, "-n", "--cores", "2", target, "--configfile", "params/extended.yaml")
    finally:
        extra.unlink()


@pytest.mark.slow
def test_another_params_file_reruns_only_what_its_values_change(project, params):
    # A file that extends tiny.yaml (so shares its name, its results folder) and adds a seed: the
    # existing runs are reused, whatever the file's path (the params file's path is not a rerun
    # trigger, its values are).
    out = plan_with(project, f"seeds: {params.seeds + [max(params.seeds) + 1]}", f"{TINY_RESULTS}/table1.csv")
    n = len(params.table_datasets) * len(params.methods)
    assert job_counts(out) == {"train": n, "evaluate": n, "table1": 1, "total": 2 * n + 1}


@pytest.mark.slow
def test_a_key_that_defines_no_run_reruns_nothing(project):
    """How a training runs (its data workers, threads) is not what it trains: changed as a user changes it,
    with --config or in a params file that extends the shipped one, it reruns no job."""
    out = snakemake(project, "-n", "--cores", "2", "report", *TINY, "--config",
                    "train={num_workers: 3, threads: 2}")
    assert nothing_to_do(out), out.stdout[-3000:]
    out = plan_with(project, "train: {num_workers: 3}", "report")
    assert nothing_to_do(out), out.stdout[-3000:]


@pytest.mark.slow
def test_one_more_ablation_value_reruns_only_its_runs(project, params):
    """Another value on one ablation axis is another run: it is planned, and no other ablation run."""
    value = max(params.ablations.frames) + 1
    out = plan_with(project, f"ablations: {{frames: {params.ablations.frames + [value]}}}",
                    f"{TINY_RESULTS}/{paths.ABLATIONS_CSV}")
    counts = job_counts(out)
    assert counts["train_ablation"] == counts["evaluate_ablation"] == len(params.seeds), counts
    planned = set(re.findall(r"wildcards: axis=(\w+), value=([\w.-]+), dataset=([\w-]+), seed=(\d+)",
                             out.stdout + out.stderr))
    assert planned == {("frames", str(value), params.ablations.dataset, str(s)) for s in params.seeds}, planned


# --------------------------------------------------------------------------- tables
@pytest.mark.slow
def test_table1_columns_rows_and_values_come_from_metrics(project, params):
    from amflow.workflow_plan import table_runs

    table = read_csv(project / TINY_RESULTS / "table1.csv")
    assert list(table.columns) == TABLE1_COLUMNS
    keys = list(dict.fromkeys((d, m) for d, m, _ in table_runs(params)))
    assert list(zip(table["dataset"], table["method"])) == keys, "one row per (dataset, method), params order"
    for _, row in table.iterrows():
        runs = [project / TINY_RESULTS / row["dataset"] / row["method"] / f"seed{s}" / "metrics.json"
                for s in params.seeds]
        metrics = [metrics_of(p) for p in runs]
        check_row(row, metrics, where=f"{row['dataset']}/{row['method']}")
        if row["method"] == "frame":  # order-blind: the same answer forwards and backwards, never right both ways
            assert all(m["both_directions_top1"] == 0.0 for m in metrics), row["dataset"]


@pytest.mark.slow
def test_ablation_tables_values_come_from_metrics(project, params):
    from amflow.workflow_plan import AXES, ablation_runs

    table = read_csv(project / TINY_RESULTS / "ablations.csv")
    assert list(table.columns) == ABLATION_COLUMNS
    runs = ablation_runs(params)
    keys = list(dict.fromkeys((r.axis, r.value, r.dataset) for r in runs))
    assert list(zip(table["axis"], table["value"], table["dataset"])) == keys
    for _, row in table.iterrows():
        files = [project / TINY_RESULTS / "ablations" / r.axis / r.value / r.dataset / f"seed{r.seed}" / "metrics.json"
                 for r in runs if (r.axis, r.value, r.dataset) == (row["axis"], row["value"], row["dataset"])]
        check_row(row, [metrics_of(p) for p in files], where=f"{row['axis']}={row['value']} {row['dataset']}")
    for axis in AXES:  # each per-axis file holds the same rows, without the axis column
        per_axis = read_csv(project / TINY_RESULTS / f"ablation_{axis}.csv")
        assert list(per_axis.columns) == [c for c in ABLATION_COLUMNS if c != "axis"]
        same = table[table["axis"] == axis].drop(columns="axis").reset_index(drop=True)
        pd.testing.assert_frame_equal(per_axis, same, check_dtype=False)


def check_row(row, metrics: list[dict], where: str):
    assert int(row["n_seeds"]) == len(metrics) >= 1, where
    sources = {"top1_pct": "top1", "top5_pct": "top5", "mean_class_acc_pct": "mean_class_acc",
               "reversed_top1_pct": "reversed_top1", "forward_top1_paired_pct": "forward_top1_paired",
               "both_directions_top1_pct": "both_directions_top1", "epochs_to_90pct": "epochs_to_90pct",
               "train_time_s": "train_time_s"}
    for column, key in sources.items():
        values = [m[key] for m in metrics]
        if all(v is None for v in values):
            assert row[f"{column}_mean"] == "" and row[f"{column}_std"] == "", (where, column)
            continue
        scale = 100.0 if column.endswith("_pct") else 1.0
        xs = [scale * float(v) for v in values]
        mean = sum(xs) / len(xs)
        assert row[f"{column}_mean"] == f"{mean:.{DECIMALS[column]}f}", (where, column, row[f"{column}_mean"], xs)
        if len(xs) == 1:
            assert row[f"{column}_std"] == "", (where, column)
        else:
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
            assert row[f"{column}_std"] == f"{std:.{DECIMALS[column]}f}", (where, column)
    m = metrics[0]
    assert row["trainable_params"] == str(m["trainable_params"]), where
    assert row["total_params"] == str(m["total_params"]), where
    assert row["gflops_per_clip"] == f"{float(m['gflops_per_clip']):.4f}", where
    assert row["am_flow_variant"] == m["am_flow_variant"], where
    assert row["views"] == str(m["views"]), where


# --------------------------------------------------------------------------- report
def markdown_tables_after(text: str, heading: str) -> list[list[dict]]:
    """The pipe tables of the report section that starts at ``heading`` (up to the next heading of
    the same or a higher level), each as a list of {header: cell} rows."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    stop = re.search(rf"^#{{1,{len(level)}}} ", rest, flags=re.M)
    section = rest[: stop.start()] if stop else rest
    tables, current = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            header, body = current[0], [r for r in current[1:] if not set("".join(r)) <= set(":-")]
            tables.append([dict(zip(header, r)) for r in body])
            current = []
    return tables


@pytest.mark.slow
def test_report_numbers_are_the_tables_numbers(project, params):
    text = (project / TINY_RESULTS / "report.md").read_text()
    table1 = read_csv(project / TINY_RESULTS / "table1.csv")
    [shown] = markdown_tables_after(text, "## Table 1: methods compared")
    cols = {"top-1 (%)": "top1_pct_mean", "top-5 (%)": "top5_pct_mean", "mean class acc (%)": "mean_class_acc_pct_mean",
            "reversed top-1 (%)": "reversed_top1_pct_mean", "forward top-1, paired (%)": "forward_top1_paired_pct_mean",
            "right both ways (%)": "both_directions_top1_pct_mean", "epochs to 90%": "epochs_to_90pct_mean",
            "train time (s)": "train_time_s_mean",
            "trainable params": "trainable_params", "total params": "total_params", "GFLOPs/clip": "gflops_per_clip",
            "AM flow variant": "am_flow_variant", "views": "views"}
    assert len(shown) == len(table1)
    for md, (_, row) in zip(shown, table1.iterrows()):
        assert (md["dataset"], md["method"]) == (row["dataset"], row["method"])
        for header, column in cols.items():
            assert md[header] == row[column], (row["dataset"], row["method"], header, md[header], row[column])
        # the count of seeds reaching tpa's final val top-1 is a number in the table, "k/n" where shown
        assert md["seeds reaching it"] == f"{row['reaching_target_seeds']}/{row['n_seeds']}", md

    ablations = read_csv(project / TINY_RESULTS / "ablations.csv")
    acols = {"top-1 (%)": "top1_pct_mean", "mean class acc (%)": "mean_class_acc_pct_mean",
             "epochs to 90%": "epochs_to_90pct_mean", "trainable params": "trainable_params",
             "GFLOPs/clip": "gflops_per_clip", "AM flow variant": "am_flow_variant"}
    for axis in dict.fromkeys(ablations["axis"]):
        tables = markdown_tables_after(text, f"### {axis}")
        rows = ablations[ablations["axis"] == axis]
        assert len(tables[0]) == len(rows), axis
        for md, (_, row) in zip(tables[0], rows.iterrows()):
            assert (md["value"], md["dataset"]) == (row["value"], row["dataset"]), axis
            for header, column in acols.items():
                assert md[header] == row[column], (axis, row["value"], row["dataset"], header)
        if axis == "variant":  # the pivot: top-1 by variant and dataset
            pivot = tables[1]
            for md in pivot:
                for dataset, cell in md.items():
                    if dataset == "variant":
                        continue
                    [value] = rows[(rows["value"] == md["variant"]) & (rows["dataset"] == dataset)]["top1_pct_mean"]
                    assert cell == value, (md["variant"], dataset)
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):  # every image the report shows exists
        assert (project / TINY_RESULTS / image).is_file(), image


# --------------------------------------------------------------------------- predict
@pytest.mark.slow
def test_predict_prints_top5_for_a_test_video(project, params):
    dataset = params.table_datasets[-1]
    data = paths.dataset_dir(project / "data", paths.dataset_key(params, dataset))
    videos = sorted((data / "videos" / "test").glob("*.mp4"))
    assert videos, "no test video"
    classes = (data / "classes.txt").read_text().split()
    # The README's form, `amflow predict video.mp4 --run <run folder>`, with the folder from the layout's code.
    out = run([BIN / "amflow", "predict", videos[0], "--run", paths.run_dir(project / TINY_RESULTS, dataset, "amflow", 0)],
              project)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 5, out.stdout
    probs = []
    for line in lines:
        m = re.fullmatch(r"\s*(\d+\.\d+)%\s+(\S+)", line)
        assert m, line
        assert m.group(2) in classes, line
        probs.append(float(m.group(1)))
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.01


# --------------------------------------------------------------------------- a changed param
@pytest.mark.slow
def test_changed_train_param_retrains_the_run(project, tmp_path):
    """Snakemake reruns a training job whose params changed (its "params" rerun trigger); the rerun
    must train with the new params, not stop on the previous run's checkpoint left in the run folder."""
    work = copy_of(project, tmp_path / "project")
    target = f"{TINY_RESULTS}/synth_static/frame/seed0/metrics.json"
    params_file = work / "params" / "tiny.yaml"
    params_file.write_text(params_file.read_text().replace("lr: 0.001,", "lr: 0.002,", 1))
    assert "lr: 0.002" in params_file.read_text()
    plan = snakemake(work, "-n", "--cores", "2", target, *TINY)
    assert "Params have changed" in plan.stdout + plan.stderr, plan.stdout[-3000:]
    snakemake(work, "--cores", "2", target, *TINY)
    saved = (work / TINY_RESULTS / "synth_static/frame/seed0/params.yaml").read_text()
    assert "lr: 0.002" in saved


@pytest.mark.slow
def test_a_changed_test_view_reruns_the_evaluation_alone(project, params, tmp_path):
    """The training job evaluated its run in its own process, and the evaluation job copied that; a changed
    test view reruns the evaluation job alone, which evaluates again (it cannot copy an evaluation made
    with other views)."""
    run = project / TINY_RESULTS / "synth_static/frame/seed0"
    first = metrics_of(run / "metrics.json")
    assert first["evaluation_reused_from"] == "evaluated_in_training" and first["views"] == 1
    assert metrics_of(run / "evaluated_in_training/metrics.json")["top1"] == first["top1"]
    work = copy_of(project, tmp_path / "project")
    target = f"{TINY_RESULTS}/table1.csv"
    override = ("--config", "sampling={test_clips: 2}")
    counts = job_counts(snakemake(work, "-n", "--cores", "2", target, *TINY, *override))
    from amflow.workflow_plan import table_runs

    assert "train" not in counts and counts["evaluate"] == len(table_runs(params))
    snakemake(work, "--cores", "2", target, *TINY, *override)
    again = metrics_of(work / TINY_RESULTS / "synth_static/frame/seed0/metrics.json")
    assert again["views"] == 2 and "evaluation_reused_from" not in again
    assert again["evaluated_with"]["checkpoint_sha256"] == first["evaluated_with"]["checkpoint_sha256"]


# --------------------------------------------------------------------------- the Snakemake way
@pytest.mark.slow
def test_config_override_reaches_the_run(project, tmp_path):
    """`--config` on top of `--configfile`: the changed value reruns the job, and the job uses it."""
    work = copy_of(project, tmp_path / "project")
    target = f"{TINY_RESULTS}/synth_static/frame/seed0/metrics.json"
    override = ("--config", "train={epochs: 1}")
    plan = snakemake(work, "-n", "--cores", "2", target, *TINY, *override)
    assert "Params have changed" in plan.stdout + plan.stderr, plan.stdout[-3000:]
    snakemake(work, "--cores", "2", target, *TINY, *override)
    assert metrics_of(work / target)["epochs"] == 1
    assert yaml.safe_load((work / TINY_RESULTS / "synth_static/frame/seed0/params.yaml").read_text())["train"]["epochs"] == 1


@pytest.mark.slow
def test_the_main_command_copies_table1_of_the_params_in_use(project, tmp_path):
    """`snakemake --cores 8 results/table1.csv` (README, `make run`): the namespaced table, built once,
    copied to the fixed place; another params file's table would replace the copy, never the original."""
    work = copy_of(project, tmp_path / "project")
    snakemake(work, "--cores", "2", "results/table1.csv", *TINY)
    assert (work / "results/table1.csv").read_bytes() == (work / TINY_RESULTS / "table1.csv").read_bytes()
    plan = snakemake(work, "-n", "--cores", "2", "results/table1.csv")  # the default params: a new table
    text = plan.stdout + plan.stderr
    assert "rule latest_table1:" in text and "results/default/table1.csv" in text


@pytest.mark.slow
def test_second_params_file_overwrites_nothing(project):
    """The default beside the tiny run: every file it would write is a new one, in its own namespace."""
    out = snakemake(project, "-n", "--cores", "2")
    outputs = [path for line in out.stdout.splitlines() if line.strip().startswith("output:")
               for path in line.split(":", 1)[1].strip().split(", ")]
    assert len(outputs) > 20 and any(p.startswith("data/") for p in outputs), out.stdout[-3000:]
    existing = [p for p in outputs if (project / p).exists()]
    assert not existing, existing
    assert all(p.startswith(("data/", "results/default/")) for p in outputs), outputs


@pytest.mark.slow
def test_snakemake_report_holds_tables_and_figures(project, tmp_path):
    import zipfile

    report_zip = tmp_path / "report.zip"
    snakemake(project, f"{TINY_RESULTS}/report.md", "--report", report_zip, *TINY)
    with zipfile.ZipFile(report_zip) as z:
        names = z.namelist()
        text = "".join(z.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    for produced in ("table1.csv", "ablations.csv", "ablation_variant.csv", "accuracy.png", "convergence.png",
                     "amflow_heatmaps.png", "camera_motion.png", "confusion.png", "curves.png", "localisation.png"):
        assert any(n.endswith(produced) for n in names), (produced, names[:50])
    # Every caption is used.
    for caption in sorted((ROOT / "workflow" / "report").glob("*.rst")):
        first_words = " ".join(caption.read_text().split()[:4])
        assert first_words in text, caption.name


@pytest.mark.slow
def test_make_report_runs_the_report_then_writes_snakemakes_html_report(project, tmp_path):
    """The README's `make report`, in one step: the report target (report.md had gone, so it runs),
    then Snakemake's HTML report of it, which needs the outputs to exist."""
    import shutil

    assert re.search(r"^make report +#", (ROOT / "README.md").read_text(), re.M)
    work = copy_of(project, tmp_path / "project")
    shutil.copy2(ROOT / "Makefile", work / "Makefile")
    (work / TINY_RESULTS / "report.md").unlink()
    run(["make", "report", "CONFIG=params/tiny.yaml", f"VENV={BIN.parent}", "CORES=2"], work)
    assert (work / TINY_RESULTS / "report.md").is_file()
    html = (work / "report.html").read_text(errors="replace")
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:2000]
    for produced in ("table1.csv", "ablations.csv", "accuracy.png", "camera_motion.png"):
        assert produced in html, produced


# --------------------------------------------------------------------------- lint
def test_snakemake_lint_is_clean_but_for_accepted_lints(tmp_path):
    project = make_project_copy(tmp_path / "project")
    out = snakemake(project, "--lint", check=False, timeout=300)
    text = out.stdout + out.stderr
    if out.returncode == 0:
        assert "Congratulations" in text, text[-3000:]
        return
    titles = {t.rstrip(":") for t in re.findall(r"^\s+\* (.+?):?\s*$", text, flags=re.M)}
    assert titles, f"snakemake --lint failed without a lint:\n{text[-3000:]}"
    assert titles - ACCEPTED_LINTS == set(), text[-6000:]
    assert "Lints for snakefile" not in text, "a whole-file lint (functions mixed with rules, ...)"
