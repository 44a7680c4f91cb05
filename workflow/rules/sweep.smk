# Optuna sweeps over the adapter's hyperparameters; the best trial becomes a params file.


rule sweep:
    input:
        lambda w: train_inputs(w),
        sweep_spec="params/sweep.yaml",
        code=code("sweep"),
    output:
        str(paths.sweep_dir(RESULTS, "{dataset}", "{method}") / paths.SWEEP_BEST),
    params:
        file=params_file,
    threads: JOB_CORES
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(1600),
        gpu=GPUS_PER_JOB,
    log:
        f"{LOGS}/sweep/{{dataset}}/{{method}}.log",
    benchmark:
        f"{BENCH}/sweep/{{dataset}}/{{method}}.tsv",
    shell:
        "amflow sweep --params {params.file} --space {input.sweep_spec} --dataset {wildcards.dataset} "
        "--method {wildcards.method}"
        " > {log} 2>&1"
