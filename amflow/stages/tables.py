"""``amflow tables``: table 1, table 1 of the first seed, or the ablation tables, written from the runs'
``metrics.json`` with the readers and builders of :mod:`amflow.report.tables`."""
from __future__ import annotations

from pathlib import Path

from amflow import io, paths
from amflow.errors import AmflowError
from amflow.params import Params
from amflow.report import plots
from amflow.report.tables import (ABLATIONS, TABLE1, ablation_axis_file, ablation_table, fair_test_table,
                                  load_table_runs, read_table, table1, to_csv_text)
from amflow.workflow_plan import AXES


def write_tables(params: Params, results_dir: Path, which: str = "table1") -> list[Path]:
    """``which``: ``table1`` -> ``plots/convergence.png``, ``plots/accuracy.png``, then ``table1.csv``
    (last); ``table1_first_seed`` -> ``table1_first_seed.csv``, table 1 of the params' first seed alone (the
    run's first answer, complete long before the other seeds' runs); ``ablations`` -> one ``ablation_<axis>.csv`` per
    axis with runs, then ``ablations.csv`` (last: the file Snakemake waits for). Returns the paths."""
    results_dir = Path(results_dir)
    if which == "table1":
        loaded = load_table_runs(params, results_dir)
        path = results_dir / TABLE1
        io.write_text(path, to_csv_text(table1(params, results_dir, loaded)))
        # the figures read the table back, so they show its rounded numbers
        figures = plots.write_plots(params, results_dir, read_table(path, ""), loaded)
        return [*figures.values(), path]
    if which == "table1_first_seed":
        first = params.model_copy(update={"seeds": params.seeds[:1]})
        path = results_dir / paths.TABLE1_FIRST_SEED_CSV
        io.write_text(path, to_csv_text(table1(first, results_dir)))
        return [path]
    if which != "ablations":
        raise AmflowError(f"amflow tables --which {which}: expected table1, table1_first_seed or ablations")
    table = ablation_table(params, results_dir)
    written = []
    for axis in AXES:
        path = ablation_axis_file(results_dir, axis)
        rows = table[table["axis"] == axis].drop(columns="axis")
        if rows.empty:
            # An axis these params do not run: a file left from an earlier config would be stale.
            path.unlink(missing_ok=True)
            continue
        io.write_text(path, to_csv_text(rows))
        written.append(path)
    fair = results_dir / paths.FAIR_TEST_CSV
    if (table["axis"] == "grid").any():
        io.write_text(fair, to_csv_text(fair_test_table(params, results_dir)))
        written.append(fair)
    else:
        fair.unlink(missing_ok=True)  # left from an earlier config with the grid: stale
    path = results_dir / ABLATIONS
    io.write_text(path, to_csv_text(table))
    return written + [path]
