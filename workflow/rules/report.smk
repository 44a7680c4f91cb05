# Tables, plots and the report: pure functions of the runs' metrics.json.


rule table1:
    input:
        [str(paths.run_dir(RESULTS, d, m, s) / "metrics.json") for d, m, s in table_runs(P)],
    output:
        f"{RESULTS}/table1.csv",
    params:
        dvc_params=tracked("table_datasets", "methods", "seeds"),
    log:
        "logs/table1.log",
    shell:
        "amflow tables --params {PARAMS} --which table1"
        " > {log} 2>&1"


rule ablations:
    input:
        [str(paths.ablation_run_dir(RESULTS, r.axis, r.value, r.dataset, r.seed) / "metrics.json")
         for r in ablation_runs(P)],
    output:
        f"{RESULTS}/ablations.csv",
        # one table per axis these params ablate (amflow.report.tables.write_tables)
        [f"{RESULTS}/ablation_{axis}.csv" for axis in dict.fromkeys(r.axis for r in ablation_runs(P))],
    params:
        dvc_params=tracked("ablations", "seeds"),
    log:
        "logs/ablations.log",
    shell:
        "amflow tables --params {PARAMS} --which ablations"
        " > {log} 2>&1"


rule amflow_heatmaps:
    input:
        [str(paths.run_dir(RESULTS, d, "amflow", P.seeds[0]) / "metrics.json") for d in P.table_datasets],
        [f"{DATA}/motion/{d}.npz" for d in P.table_datasets],
    output:
        png=f"{RESULTS}/plots/amflow_heatmaps.png",
        gif=f"{RESULTS}/plots/amflow_heatmaps.gif",
        json=f"{RESULTS}/plots/amflow_heatmaps.json",
    log:
        "logs/amflow_heatmaps.log",
    shell:
        "amflow heatmaps --params {PARAMS}"
        " > {log} 2>&1"


rule report:
    input:
        f"{RESULTS}/table1.csv",
        f"{RESULTS}/ablations.csv",
        f"{RESULTS}/plots/amflow_heatmaps.png",
    output:
        f"{RESULTS}/plots/convergence.png",
        f"{RESULTS}/plots/accuracy.png",
        f"{RESULTS}/report.md",
    log:
        "logs/report.log",
    shell:
        "amflow report --params {PARAMS}"
        " > {log} 2>&1"
