"""Result tables: values equal the runs' metrics, documented columns, same bytes twice, clear errors."""
import json
from pathlib import Path

import pandas as pd
import pytest

from amflow import paths
from amflow.errors import AmflowError
from amflow.params_io import load_params
from amflow.report import display, tables
from amflow.stages.tables import write_tables
from amflow.workflow_plan import ablation_runs, table_runs
from table_columns import ABLATION_COLUMNS, TABLE1_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("synth_static", "synth_moving")

# top-1 per (dataset, method) for seeds 0 and 1; every other figure derives from it.
TOP1 = {
    ("synth_static", "frame"): (0.40, 0.42), ("synth_static", "tpa"): (0.60, 0.64),
    ("synth_static", "amflow"): (0.70, 0.74),
    ("synth_moving", "frame"): (0.30, 0.30), ("synth_moving", "tpa"): (0.55, 0.59),
    ("synth_moving", "amflow"): (0.50, 0.52),   # AM flow loses to TPA here
}
# Variant ablation: aligned beats static on the moving camera, not on the static one.
VARIANT_TOP1 = {("static", "synth_static"): 0.70, ("aligned", "synth_static"): 0.69,
                ("static", "synth_moving"): 0.45, ("aligned", "synth_moving"): 0.58}


def small_params(**extra):
    """2 datasets x 3 methods x 2 seeds, and a small ablation grid."""
    overrides = {"methods": ["frame", "tpa", "amflow"], "seeds": [0, 1],
                 "ablations": {"variants": ["none", "static", "aligned"], "tpus": ["transformer", "tcn"],
                               "source_layers": ["same"], "num_blocks": [2], "frames": [4]}}
    overrides.update(extra)
    return load_params(ROOT / "params/default.yaml", overrides)


def metrics(dataset, method, seed, top1, *, reversed_top1=None, forward=None, both=None, **extra):
    m = {"dataset": dataset, "method": method, "seed": seed, "top1": top1, "top5": min(1.0, top1 + 0.2),
         "mean_class_acc": top1 - 0.01, "views": 1, "trainable_params": {"frame": 1548}.get(method, 90000),
         "total_params": 1_300_000, "gflops_per_clip": 0.123456, "train_time_s": 60.0 + 10 * seed,
         "eval_time_s": 5.0, "val_curve": [top1 / 3, top1 * 0.8, top1], "epochs_to_90pct": 2 + seed,
         "am_flow_variant": "aligned" if method == "amflow" and dataset == "synth_moving" else
         ("static" if method == "amflow" else "none"),
         "reversed_top1": reversed_top1, "forward_top1_paired": forward, "both_directions_top1": both}
    m.update(extra)
    return m


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_runs(params, results: Path, top1=TOP1) -> None:
    for d, m, s in table_runs(params):
        t = top1[(d, m)][s]
        # Temporal diagnostic only on the static dataset: the frame model is order-blind (never right both ways).
        rev, fwd, both = ((0.1 if m == "frame" else t - 0.05), (0.45 if m == "frame" else t),
                          (0.0 if m == "frame" else t - 0.1)) if d == "synth_static" else (None, None, None)
        write(paths.run_dir(results, d, m, s) / paths.METRICS_JSON,
              metrics(d, m, s, t, reversed_top1=rev, forward=fwd, both=both))


def write_ablations(params, results: Path) -> None:
    if not any(results.glob("synth_*/tpa/seed*/metrics.json")):
        write_runs(params, results)  # table 1's tpa runs: the ablation rows are paired with them
    for r in ablation_runs(params):
        t = VARIANT_TOP1.get((r.value, r.dataset), 0.5 + 0.01 * len(r.value)) + 0.02 * r.seed
        write(paths.ablation_run_dir(results, r.axis, r.value, r.dataset, r.seed) / paths.METRICS_JSON,
              metrics(r.dataset, "amflow", r.seed, t, am_flow_variant=r.value if r.axis == "variant" else "aligned"))


def read_csv(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# --------------------------------------------------------------------------- table 1
def test_table1_values_equal_the_metrics(tmp_path):
    p = small_params()
    write_runs(p, tmp_path)
    write_tables(p, tmp_path, which="table1")
    t = read_csv(tmp_path / "table1.csv")
    assert list(t.columns) == TABLE1_COLUMNS
    assert list(zip(t["dataset"], t["method"])) == [(d, m) for d in DATASETS for m in ("frame", "tpa", "amflow")]
    row = t[(t["dataset"] == "synth_static") & (t["method"] == "tpa")].iloc[0]
    assert row["n_seeds"] == "2"
    assert row["top1_pct_mean"] == "62.00"
    assert row["top1_pct_std"] == "2.83"            # sample std of 60 and 64 = 2.828...
    assert row["top5_pct_mean"] == "82.00"
    assert row["mean_class_acc_pct_mean"] == "61.00"
    assert row["reversed_top1_pct_mean"] == "57.00"
    assert row["forward_top1_paired_pct_mean"] == "62.00"
    assert row["both_directions_top1_pct_mean"] == "52.00"      # 50 and 54 (write_runs: top-1 - 10 points)
    assert row["epochs_to_90pct_mean"] == "2.50" and row["epochs_to_90pct_std"] == "0.71"
    assert row["train_time_s_mean"] == "65.0" and row["train_time_s_std"] == "7.1"
    assert (row["trainable_params"], row["total_params"], row["gflops_per_clip"]) == ("90000", "1300000", "0.1235")
    assert row["am_flow_variant"] == "none" and row["views"] == "1"
    moving = t[(t["dataset"] == "synth_moving") & (t["method"] == "amflow")].iloc[0]
    assert moving["top1_pct_mean"] == "51.00" and moving["am_flow_variant"] == "aligned"
    # no time-reversal pairs: empty, not 0 or NaN text
    assert moving["reversed_top1_pct_mean"] == "" and moving["reversed_top1_pct_std"] == ""


def test_single_seed_has_empty_std(tmp_path):
    p = small_params(seeds=[0])
    write_runs(p, tmp_path)
    t = read_csv(write_tables(p, tmp_path, which="table1")[-1])
    assert set(t["n_seeds"]) == {"1"} and set(t["top1_pct_std"]) == {""}
    assert t.loc[0, "top1_pct_mean"] == "40.00"


def test_the_first_seeds_table_is_table1_of_seed_0_alone_before_seed_1_exists(tmp_path):
    p = small_params()
    write_runs(small_params(seeds=[0]), tmp_path)  # only seed 0 has run
    with pytest.raises(AmflowError):
        write_tables(p, tmp_path, which="table1")
    first = write_tables(p, tmp_path, which="table1_first_seed")
    assert first == [tmp_path / paths.TABLE1_FIRST_SEED_CSV]
    t = read_csv(first[0])
    assert list(t.columns) == TABLE1_COLUMNS and set(t["n_seeds"]) == {"1"}
    tpa = t[(t["dataset"] == "synth_static") & (t["method"] == "tpa")].iloc[0]
    assert tpa["top1_pct_mean"] == "60.00"  # seed 0's top-1 (TOP1), not a mean over seeds


def test_tables_are_pure(tmp_path):
    p = small_params()
    write_runs(p, tmp_path)
    write_ablations(p, tmp_path)
    first = {w: [f.read_bytes() for f in write_tables(p, tmp_path, which=w)] for w in ("table1", "ablations")}
    # Same content, other key order and newer files: same bytes.
    for f in tmp_path.rglob("metrics.json"):
        f.write_text(json.dumps(dict(reversed(list(json.loads(f.read_text()).items())))))
    second = {w: [f.read_bytes() for f in write_tables(p, tmp_path, which=w)] for w in ("table1", "ablations")}
    assert first == second


def test_missing_metrics_names_file_and_command(tmp_path):
    p = small_params()
    write_runs(p, tmp_path)
    gone = paths.run_dir(tmp_path, "synth_moving", "tpa", 1) / paths.METRICS_JSON
    gone.unlink()
    with pytest.raises(AmflowError) as err:
        write_tables(p, tmp_path, which="table1")
    assert str(gone) in str(err.value) and "snakemake" in str(err.value)
    assert not (tmp_path / "table1.csv").exists()


def test_inconsistent_runs_are_errors(tmp_path):
    p = small_params()
    write_runs(p, tmp_path)
    f = paths.run_dir(tmp_path, "synth_static", "amflow", 1) / paths.METRICS_JSON
    m = json.loads(f.read_text())
    write(f, {**m, "trainable_params": 1})                 # seeds ran different models
    with pytest.raises(AmflowError, match="trainable_params"):
        tables.table1(p, tmp_path)
    write(f, {**m, "dataset": "synth_moving"})             # a file copied into the wrong run folder
    with pytest.raises(AmflowError, match="copied or moved"):
        tables.table1(p, tmp_path)
    write(f, {**m, "top1": 71.0})                          # percent where a fraction belongs
    with pytest.raises(AmflowError, match="fractions"):
        tables.table1(p, tmp_path)
    write(f, {k: v for k, v in m.items() if k != "val_curve"})
    with pytest.raises(AmflowError, match="val_curve"):
        tables.table1(p, tmp_path)


# --------------------------------------------------------------------------- ablations
def test_ablation_tables_cover_every_run(tmp_path):
    p = small_params()
    write_runs(p, tmp_path)
    write_ablations(p, tmp_path)
    (tmp_path / "ablation_stale.csv").write_text("kept: not an axis")
    written = write_tables(p, tmp_path, which="ablations")
    assert written[-1] == tmp_path / "ablations.csv"
    long = read_csv(tmp_path / "ablations.csv")
    assert list(long.columns) == ABLATION_COLUMNS
    want = list(dict.fromkeys((r.axis, r.value, r.dataset) for r in ablation_runs(p)))
    assert list(zip(long["axis"], long["value"], long["dataset"])) == want
    assert set(long["n_seeds"]) == {"2"}
    row = long[(long["axis"] == "variant") & (long["value"] == "aligned") & (long["dataset"] == "synth_moving")]
    assert row.iloc[0]["top1_pct_mean"] == "59.00" and row.iloc[0]["am_flow_variant"] == "aligned"
    for axis in ("variant", "tpu", "source", "blocks", "frames"):
        per_axis = read_csv(tmp_path / f"ablation_{axis}.csv")
        mine = long[long["axis"] == axis].drop(columns="axis").reset_index(drop=True)
        pd.testing.assert_frame_equal(per_axis, mine)
    assert (tmp_path / "ablation_stale.csv").exists()


def test_axis_without_runs_leaves_no_stale_file(tmp_path):
    p = small_params()
    write_ablations(p, tmp_path)
    write_tables(p, tmp_path, which="ablations")
    assert (tmp_path / "ablation_frames.csv").exists()
    p2 = small_params(ablations={"variants": ["static", "aligned"], "tpus": ["transformer", "tcn"],
                                 "source_layers": ["same"], "num_blocks": [2], "frames": []})
    write_tables(p2, tmp_path, which="ablations")
    assert not (tmp_path / "ablation_frames.csv").exists()
    assert "frames" not in set(read_csv(tmp_path / "ablations.csv")["axis"])


def test_variant_pivot(tmp_path):
    p = small_params()
    write_ablations(p, tmp_path)
    pivot = tables.variant_pivot(tables.ablation_table(p, tmp_path))
    assert list(pivot.index) == ["none", "static", "aligned"] and list(pivot.columns) == list(DATASETS)
    assert pivot.loc["aligned", "synth_moving"] == pytest.approx(59.0)
    assert pivot.loc["static", "synth_static"] == pytest.approx(71.0)


def test_read_table_round_trips(tmp_path):
    p = small_params()
    write_runs(p, tmp_path)
    write_tables(p, tmp_path, which="table1")
    back = tables.read_table(tmp_path / "table1.csv", "make it")
    assert back["top1_pct_mean"].dtype.kind == "f" and back.loc[0, "top1_pct_mean"] == 41.0
    assert pd.isna(back.loc[3, "reversed_top1_pct_mean"])
    with pytest.raises(AmflowError, match="make it"):
        tables.read_table(tmp_path / "nope.csv", "make it")


def test_table1_paired_difference_and_convergence_to_tpa(tmp_path):
    p = small_params()
    write_runs(p, tmp_path)
    # Replace the curves of synth_moving with ones whose answer is worked out by hand below.
    curves = {("tpa", 0): [0.2, 0.5, 0.55], ("tpa", 1): [0.3, 0.55, 0.60],      # target: (0.55 + 0.60) / 2
              ("amflow", 0): [0.4, 0.6, 0.6], ("amflow", 1): [0.58, 0.5, 0.5],  # epochs 2 and 1
              ("frame", 0): [0.1, 0.2, 0.3], ("frame", 1): [0.1, 0.2, 0.3]}      # never reaches it
    for (m, s), curve in curves.items():
        path = paths.run_dir(tmp_path, "synth_moving", m, s) / "metrics.json"
        data = json.loads(path.read_text())
        data.update(val_curve=curve, epoch_times=[10.0 + s, 20.0, 30.0], train_clips_per_s=100.0 + s)
        write(path, data)
    write_tables(p, tmp_path, which="table1")
    t = read_csv(tmp_path / "table1.csv").set_index(["dataset", "method"])
    am, tpa, fr = t.loc[("synth_moving", "amflow")], t.loc[("synth_moving", "tpa")], t.loc[("synth_moving", "frame")]
    # amflow - tpa per seed: 0.50 - 0.55 and 0.52 - 0.59 -> -5 and -7 points: mean -6, sample std sqrt(2).
    assert (am["top1_vs_tpa_pct_mean"], am["top1_vs_tpa_pct_std"]) == ("-6.00", "1.41")
    assert tpa["top1_vs_tpa_pct_mean"] == "" and tpa["top1_vs_tpa_pct_std"] == ""
    assert am["target_val_top1_pct"] == tpa["target_val_top1_pct"] == "57.50"
    # amflow: epoch 2 (seed 0, 10 + 20 s) and epoch 1 (seed 1, 11 s).
    assert (am["epochs_to_target_mean"], am["epochs_to_target_std"], am["reaching_target_seeds"]) == \
        ("1.50", "0.71", "2")
    assert (am["time_to_target_s_mean"], am["time_to_target_s_std"]) == ("20.5", "13.4")
    # tpa itself: seed 0 never reaches the mean of its own final values (0.55 < 0.575), seed 1 at epoch 3.
    assert (tpa["epochs_to_target_mean"], tpa["epochs_to_target_std"], tpa["reaching_target_seeds"]) == \
        ("3.00", "", "1")
    assert tpa["time_to_target_s_mean"] == "61.0"
    assert (fr["epochs_to_target_mean"], fr["reaching_target_seeds"]) == ("", "0")
    assert (am["train_clips_per_s_mean"], am["train_clips_per_s_std"]) == ("100.5", "0.7")
    # The table holds the count as a number; "k/n" is made only where it is shown.
    back = tables.read_table(tmp_path / "table1.csv", "make it").set_index(["dataset", "method"])
    assert back.loc[("synth_moving", "tpa"), "reaching_target_seeds"] == 1
    assert display.of_seeds(back.loc[("synth_moving", "tpa")]) == "1/2"


def test_ablation_plan_crosses_tpus_with_tpa_and_the_amflow_grid():
    p = small_params(seeds=[0, 1, 2], ablations={
        "variants": [], "tpus": ["tcn", "lstm"], "source_layers": [], "num_blocks": [], "frames": [],
        "grid": {"variants": ["static", "aligned"], "integrations": ["gate", "channels"],
                 "controls": ["none", "oracle"], "datasets": ["synth_static", "synth_moving"]}})
    runs = ablation_runs(p)
    tpu = {(r.axis, r.value, r.method) for r in runs if r.axis.startswith("tpu")}
    assert tpu == {("tpu", "tcn", "amflow"), ("tpu", "lstm", "amflow"), ("tpu_tpa", "tcn", "tpa"),
                   ("tpu_tpa", "lstm", "tpa")}
    grid = [r for r in runs if r.axis == "grid"]
    # integrations x (each variant without a control + the control at the dataset's own variant) x datasets x seeds
    assert len(grid) == 2 * (2 + 1) * 2 * 3
    assert {r.value for r in grid} == {"static-gate-none", "aligned-gate-none", "auto-gate-oracle",
                                       "static-channels-none", "aligned-channels-none", "auto-channels-oracle"}
    one = next(r for r in grid if r.value == "auto-channels-oracle" and r.dataset == "synth_static" and r.seed == 2)
    assert one.method == "amflow" and one.overrides == {
        "model.am_flow.variant": "auto", "model.am_flow.integration": "channels", "model.am_flow.control": "oracle"}
    # Every ablated (dataset, seed) is paired with its table-1 tpa run.
    from amflow.workflow_plan import reference_runs
    assert sorted(reference_runs(p)) == sorted((d, "tpa", s) for d in DATASETS for s in (0, 1, 2))


def test_ablation_rows_carry_the_paired_difference_to_tpa(tmp_path):
    p = small_params()
    write_ablations(p, tmp_path)
    t = read_csv(write_tables(p, tmp_path, which="ablations")[-1]).set_index(["axis", "value", "dataset"])
    # variant aligned on synth_moving: 0.58 + 0.02 s against tpa 0.55 / 0.59 -> +3 and +1 points.
    row = t.loc[("variant", "aligned", "synth_moving")]
    assert (row["top1_vs_tpa_pct_mean"], row["top1_vs_tpa_pct_std"]) == ("2.00", "1.41")


def test_ablations_without_tpa_in_the_methods_have_no_pairing(tmp_path):
    from amflow.workflow_plan import reference_runs

    p = small_params(methods=["frame", "amflow"])
    assert reference_runs(p) == []
    write_ablations(small_params(), tmp_path)  # the fixture's runs; tpa's are simply not read
    t = read_csv(write_tables(p, tmp_path, which="ablations")[-1])
    # Only the TPU rows keep a pairing: with the tpu_tpa runs of the same TPU, which the axis itself runs.
    assert set(t[t["axis"] != "tpu"]["top1_vs_tpa_pct_mean"]) == {""}


def test_amflow_with_another_tpu_is_paired_with_tpa_of_that_tpu(tmp_path):
    p = small_params(ablations={"variants": [], "tpus": ["tcn"], "source_layers": [], "num_blocks": [], "frames": []})
    write_runs(p, tmp_path)
    for seed, (am, tp) in enumerate(((0.50, 0.60), (0.56, 0.62))):
        write(paths.ablation_run_dir(tmp_path, "tpu", "tcn", "synth_moving", seed) / "metrics.json",
              metrics("synth_moving", "amflow", seed, am))
        write(paths.ablation_run_dir(tmp_path, "tpu_tpa", "tcn", "synth_moving", seed) / "metrics.json",
              metrics("synth_moving", "tpa", seed, tp))
    t = read_csv(write_tables(p, tmp_path, which="ablations")[-1]).set_index(["axis", "value"])
    # amflow-tcn - tpa-tcn: -10 and -6 points; tpa-tcn - table-1 tpa (55, 59): +5 and +3 points.
    assert (t.loc[("tpu", "tcn"), "top1_vs_tpa_pct_mean"], t.loc[("tpu", "tcn"), "top1_vs_tpa_pct_std"]) == ("-8.00", "2.83")
    assert t.loc[("tpu_tpa", "tcn"), "top1_vs_tpa_pct_mean"] == "4.00"


def test_fair_test_rows_give_the_share_of_the_footprint_oracles_gain(tmp_path):
    """Grid runs on synth_moving (seeds 0, 1; tpa 55 and 59 %): the share of the footprint oracle's gain
    is taken seed by seed, over the seeds where the oracle gains; hand-computed figures."""
    p = small_params(ablations={"variants": [], "tpus": [], "source_layers": [], "num_blocks": [], "frames": [],
                                "tpu_with_tpa": False,
                                "grid": {"variants": ["aligned"], "integrations": ["pool"],
                                         "controls": ["none", "footprint", "uniform"], "datasets": ["synth_moving"]}})
    write_runs(p, tmp_path)
    top1 = {"aligned-pool-none": (0.57, 0.60), "auto-pool-footprint": (0.65, 0.58), "auto-pool-uniform": (0.55, 0.61)}
    for value, per_seed in top1.items():
        for seed, t in enumerate(per_seed):
            write(paths.ablation_run_dir(tmp_path, "grid", value, "synth_moving", seed) / "metrics.json",
                  metrics("synth_moving", "amflow", seed, t, val_curve=[0.5, t, t]))
    written = write_tables(p, tmp_path, which="ablations")
    fair = read_csv(tmp_path / "fair_test.csv").set_index("setting")
    assert tmp_path / "fair_test.csv" in written
    assert list(fair.index) == ["aligned", "footprint", "uniform"] and set(fair["integration"]) == {"pool"}
    # amflow: +2 and +1 points; the footprint gains +10 at seed 0 and loses 1 at seed 1 (not counted).
    row = fair.loc["aligned"]
    assert (row["top1_vs_tpa_pct_mean"], row["top1_vs_tpa_pct_std"]) == ("1.50", "0.71")
    assert (row["share_of_footprint_gain_mean"], row["share_of_footprint_gain_std"], row["footprint_gain_seeds"]) \
        == ("0.200", "", "1")
    assert (fair.loc["footprint", "top1_vs_uniform_pct_mean"], fair.loc["footprint", "top1_vs_uniform_pct_std"]) \
        == ("3.50", "9.19")                                    # +10 and -3 points against uniform
    assert fair.loc["footprint", "share_of_footprint_gain_mean"] == "1.000"
    assert fair.loc["uniform", "share_of_footprint_gain_mean"] == "0.000"
    # Convergence to tpa's final val top-1 (mean 0.57): the curves end at their top-1.
    assert fair.loc["aligned", "target_val_top1_pct"] == "57.00"
    assert fair.loc["aligned", "reaching_target_seeds"] == "2" and fair.loc["uniform", "reaching_target_seeds"] == "1"
    # Params without the grid leave no stale fair test behind.
    write_ablations(small_params(), tmp_path)
    write_tables(small_params(), tmp_path, which="ablations")
    assert not (tmp_path / "fair_test.csv").exists()
