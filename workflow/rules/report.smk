# Tables, plots and the report: pure functions of the runs' metrics.json.


rule table1:
    input:
        [str(paths.run_dir(RESULTS, d, m, s) / "metrics.json") for d, m, s in table_runs(P)],
    output:
        report(f"{RESULTS}/table1.csv", caption=caption("table1"), category="Tables"),
        report(f"{RESULTS}/plots/convergence.png", caption=caption("convergence"), category="Figures"),
        report(f"{RESULTS}/plots/accuracy.png", caption=caption("accuracy"), category="Figures"),
    params:
        dvc_params=tracked("table_datasets", "methods", "seeds"),
    threads: 1
    log:
        f"{LOGS}/table1.log",
    benchmark:
        f"{BENCH}/table1.tsv",
    shell:
        "amflow tables --params {PARAMS} --which table1"
        " > {log} 2>&1"


rule ablations:
    input:
        [str(paths.ablation_run_dir(RESULTS, r.axis, r.value, r.dataset, r.seed) / "metrics.json")
         for r in ablation_runs(P)],
        # table 1's tpa runs of the same datasets and seeds: each row's paired difference is against them
        [str(paths.run_dir(RESULTS, d, m, s) / "metrics.json") for d, m, s in reference_runs(P)],
    output:
        report(f"{RESULTS}/ablations.csv", caption=caption("ablations"), category="Tables"),
        # one table per axis these params ablate (amflow.report.tables.write_tables)
        [report(f"{RESULTS}/ablation_{axis}.csv", caption=caption("ablation_axis"), category="Tables",
                labels={"table": f"ablation: {axis}"})
         for axis in dict.fromkeys(r.axis for r in ablation_runs(P))],
    params:
        dvc_params=tracked("ablations", "seeds"),
    threads: 1
    log:
        f"{LOGS}/ablations.log",
    benchmark:
        f"{BENCH}/ablations.tsv",
    shell:
        "amflow tables --params {PARAMS} --which ablations"
        " > {log} 2>&1"


rule amflow_heatmaps:
    input:
        [str(paths.run_dir(RESULTS, d, "amflow", P.seeds[0]) / "metrics.json") for d in P.table_datasets],
        [str(paths.motion_file(RESULTS, d)) for d in P.table_datasets],
    output:
        png=report(f"{RESULTS}/plots/amflow_heatmaps.png", caption=caption("amflow_heatmaps"), category="Figures"),
        gif=f"{RESULTS}/plots/amflow_heatmaps.gif",
        json=f"{RESULTS}/plots/amflow_heatmaps.json",
    threads: 1
    log:
        f"{LOGS}/amflow_heatmaps.log",
    benchmark:
        f"{BENCH}/amflow_heatmaps.tsv",
    shell:
        "amflow heatmaps --params {PARAMS}"
        " > {log} 2>&1"


rule report:
    input:
        f"{RESULTS}/table1.csv",
        f"{RESULTS}/ablations.csv",
        f"{RESULTS}/plots/amflow_heatmaps.png",
        # localisation against SynthMotion's ground truth, for the table's generated datasets
        [str(paths.localisation_dir(RESULTS, d) / "localisation.csv") for d in P.table_datasets
         if P.datasets[d].source == "synthmotion"],
    output:
        f"{RESULTS}/report.md",
    threads: 1
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv",
    shell:
        "amflow report --params {PARAMS}"
        " > {log} 2>&1"
