# Tables, plots and the report: pure functions of the runs' metrics.json.


rule table1:
    input:
        [str(paths.run_dir(RESULTS, d, m, s) / paths.METRICS_JSON) for d, m, s in table_runs(P)],
        code=code("tables"),
    output:
        report(f"{RESULTS}/{paths.TABLE1_CSV}", caption=caption("table1"), category="Tables"),
        report(f"{PLOTS}/{paths.CONVERGENCE_PNG}", caption=caption("convergence"), category="Figures"),
        report(f"{PLOTS}/{paths.ACCURACY_PNG}", caption=caption("accuracy"), category="Figures"),
    params:
        file=params_file,
        dvc_params=tracked("table_datasets", "methods", "seeds"),
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(500),
    log:
        f"{LOGS}/table1.log",
    benchmark:
        f"{BENCH}/table1.tsv",
    shell:
        "amflow tables --params {params.file} --which table1"
        " > {log} 2>&1"


# Table 1 of the first seed alone: the run's first answer. The first seed's trainings and evaluations go
# first (`first_seed_first`), so this table is complete long before the other seeds' runs end.
rule table1_first_seed:
    input:
        [str(paths.run_dir(RESULTS, d, m, s) / paths.METRICS_JSON) for d, m, s in table_runs(P) if s == P.seeds[0]],
        code=code("tables"),
    output:
        report(f"{RESULTS}/{paths.TABLE1_FIRST_SEED_CSV}", caption=caption("table1"), category="Tables"),
    params:
        file=params_file,
        dvc_params=tracked("table_datasets", "methods", "seeds"),
    priority: FIRST_SEED_PRIORITY
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(500),
    log:
        f"{LOGS}/table1_first_seed.log",
    benchmark:
        f"{BENCH}/table1_first_seed.tsv",
    shell:
        "amflow tables --params {params.file} --which table1_first_seed"
        " > {log} 2>&1"


rule ablations:
    input:
        [str(paths.ablation_run_dir(RESULTS, r.axis, r.value, r.dataset, r.seed) / paths.METRICS_JSON)
         for r in ablation_runs(P)],
        # table 1's tpa runs of the same datasets and seeds: each row's paired difference is against them
        [str(paths.run_dir(RESULTS, d, m, s) / paths.METRICS_JSON) for d, m, s in reference_runs(P)],
        code=code("tables"),
    output:
        report(f"{RESULTS}/{paths.ABLATIONS_CSV}", caption=caption("ablations"), category="Tables"),
        # one table per axis these params ablate (amflow.stages.tables.write_tables)
        [report(str(paths.ablation_table_file(RESULTS, axis)), caption=caption("ablation_axis"), category="Tables",
                labels={"table": f"ablation: {axis}"})
         for axis in dict.fromkeys(r.axis for r in ablation_runs(P))],
    params:
        file=params_file,
        dvc_params=tracked("ablations", "seeds"),
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(500),
    log:
        f"{LOGS}/ablations.log",
    benchmark:
        f"{BENCH}/ablations.tsv",
    shell:
        "amflow tables --params {params.file} --which ablations"
        " > {log} 2>&1"


rule amflow_heatmaps:
    input:
        [str(paths.run_dir(RESULTS, d, "amflow", P.seeds[0]) / paths.METRICS_JSON) for d in P.table_datasets],
        [str(paths.motion_file(RESULTS, d)) for d in P.table_datasets],
        code=code("heatmaps"),
    output:
        png=report(f"{PLOTS}/{paths.HEATMAPS_PNG}", caption=caption("amflow_heatmaps"), category="Figures"),
        gif=f"{PLOTS}/{paths.HEATMAPS_GIF}",
        json=f"{PLOTS}/{paths.HEATMAPS_JSON}",
    params:
        file=params_file,
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(1600),
    log:
        f"{LOGS}/amflow_heatmaps.log",
    benchmark:
        f"{BENCH}/amflow_heatmaps.tsv",
    shell:
        "amflow heatmaps --params {params.file}"
        " > {log} 2>&1"


rule report:
    input:
        f"{RESULTS}/{paths.TABLE1_CSV}",
        f"{RESULTS}/{paths.ABLATIONS_CSV}",
        # the heat maps show table 1's amflow runs (params that leave amflow out of table 1 have none)
        [f"{PLOTS}/{paths.HEATMAPS_PNG}"] if "amflow" in P.methods else [],
        # localisation against SynthMotion's ground truth, for the table's generated datasets
        [str(paths.localisation_dir(RESULTS, d) / paths.LOCALISATION_CSV) for d in P.table_datasets
         if P.datasets[d].source == "synthmotion"],
        code=code("report"),
    output:
        f"{RESULTS}/{paths.REPORT_MD}",
    params:
        file=params_file,
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(500),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv",
    shell:
        "amflow report --params {params.file}"
        " > {log} 2>&1"
