# Training and evaluation, one job per (dataset, method, seed), plus the ablation runs.
#
# A training job also evaluates its run, in the same process (`amflow train --evaluate`: one start-up, one
# import of torch, timm and MLflow), into the run's evaluated_in_training/; the evaluation job copies
# those files into the run folder when they were made from the same checkpoint with the same params
# (amflow.evaluate.reuse). The training's rerun trigger leaves the test views out, so a changed test
# view reruns the evaluation job alone, which then evaluates again.
#
# One thread per job by default: on a CPU, several single-threaded runs side by side use the cores
# better than one multi-threaded run (small models). Cluster profiles raise it (set-threads).
#
# The checkpoint is an output of training, so a lost one is made again (from the run's train_state.pt, or by
# training again) before an evaluation needs it; the per-epoch train_state.pt is not an output: Snakemake
# deletes a failed job's outputs, and that file is what a rerun resumes from.


rule train:
    input:
        train_inputs,
        code=code("train"),
    output:
        train_json=f"{RUN_DIR}/{paths.TRAIN_JSON}",
        checkpoint=f"{RUN_DIR}/{paths.CHECKPOINT}",
        **training_evaluation(RUN_DIR),
    params:
        file=params_file,
        launch=launcher,
        dvc_params=identified(lambda w: identity.training(P, w.dataset, w.method, w.seed)),
    priority: first_seed_first
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(1600),
        gpu=GPUS_PER_JOB,
    log:
        f"{LOGS}/train/{{dataset}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train/{{dataset}}/{{method}}/seed{{seed}}.tsv",
    shell:
        "{params.launch} train --params {params.file} --dataset {wildcards.dataset} "
        "--method {wildcards.method} --seed {wildcards.seed} --evaluate"
        " > {log} 2>&1"


rule evaluate:
    input:
        train_json=f"{RUN_DIR}/{paths.TRAIN_JSON}",
        checkpoint=f"{RUN_DIR}/{paths.CHECKPOINT}",
        **training_evaluation(RUN_DIR),
        code=code("evaluate"),
    output:
        **evaluation_outputs(RUN_DIR, "Runs"),
    params:
        file=params_file,
        dvc_params=identified(lambda w: identity.evaluation(P, w.dataset, w.method, w.seed)),
    priority: first_seed_first
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(1600),
        gpu=GPUS_PER_JOB,
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{dataset}}/{{method}}/seed{{seed}}.tsv",
    shell:
        "amflow evaluate --params {params.file} --dataset {wildcards.dataset} "
        "--method {wildcards.method} --seed {wildcards.seed}"
        " > {log} 2>&1"


rule train_ablation:
    input:
        ablation_inputs,
        code=code("train"),
    output:
        train_json=f"{ABLATION_RUN_DIR}/{paths.TRAIN_JSON}",
        checkpoint=f"{ABLATION_RUN_DIR}/{paths.CHECKPOINT}",
        **training_evaluation(ABLATION_RUN_DIR),
    params:
        file=params_file,
        run_dir=run_dir_of,
        launch=launcher,
        overrides=lambda w: ablation(w).set_args(),
        method=lambda w: ablation(w).method,
        dvc_params=identified(ablation_identity(identity.training)),
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(1600),
        gpu=GPUS_PER_JOB,
    log:
        f"{LOGS}/train_ablation/{{axis}}/{{value}}/{{dataset}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train_ablation/{{axis}}/{{value}}/{{dataset}}/seed{{seed}}.tsv",
    shell:
        "{params.launch} train --params {params.file} --dataset {wildcards.dataset} --method {params.method} "
        "--seed {wildcards.seed} --run-dir {params.run_dir} {params.overrides} --evaluate"
        " > {log} 2>&1"


rule evaluate_ablation:
    input:
        train_json=f"{ABLATION_RUN_DIR}/{paths.TRAIN_JSON}",
        checkpoint=f"{ABLATION_RUN_DIR}/{paths.CHECKPOINT}",
        **training_evaluation(ABLATION_RUN_DIR),
        code=code("evaluate"),
    output:
        **evaluation_outputs(ABLATION_RUN_DIR, "Ablation runs"),
    params:
        file=params_file,
        run_dir=run_dir_of,
        overrides=lambda w: ablation(w).set_args(),
        method=lambda w: ablation(w).method,
        dvc_params=identified(ablation_identity(identity.evaluation)),
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(1600),
        gpu=GPUS_PER_JOB,
    log:
        f"{LOGS}/evaluate_ablation/{{axis}}/{{value}}/{{dataset}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate_ablation/{{axis}}/{{value}}/{{dataset}}/seed{{seed}}.tsv",
    shell:
        "amflow evaluate --params {params.file} --dataset {wildcards.dataset} --method {params.method} "
        "--seed {wildcards.seed} --run-dir {params.run_dir} {params.overrides}"
        " > {log} 2>&1"
