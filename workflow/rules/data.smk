# Datasets: generate (SynthMotion) or download/verify (real datasets), then decode into the frame cache.
# Data folders are keyed by the spec's hash ({spec}), so params files with equal specs share them.


rule prepare_dataset:
    # Before every training: a job on all cores starts only when all are free, so one that waits behind
    # single-core trainings of a lower or equal priority waits until they happen to end together.
    priority: 20
    input:
        dataset_lists,
        code=code("prepare"),
    output:
        f"{DATASET_DIR}/{paths.DATASET_JSON}",
    params:
        file=params_file,
        dvc_params=tracked("datasets.{dataset}"),
        dvc_outs=lambda w: [DATASET_DIR.format(dataset=w.dataset, spec=w.spec)],
    threads: JOB_CORES
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(250, 200),
        runtime=240,
    log:
        f"{LOGS}/prepare_dataset/{{dataset}}-{{spec}}.log",
    benchmark:
        f"{BENCH}/prepare_dataset/{{dataset}}-{{spec}}.tsv",
    shell:
        "amflow prepare --params {params.file} --dataset {wildcards.dataset}"
        " > {log} 2>&1"


if P.pretrain_images is not None:

    rule pretrain_images:
        input:
            code=code("pretrain-images"),
        output:
            pretrain_images_info(),
        params:
            file=params_file,
            dvc_params=tracked("pretrain_images"),
            dvc_outs=[str(paths.pretrain_images_dir(DATA, P))],
        priority: 20  # on the critical path: the backbone's pretraining waits for it
        threads: JOB_CORES
        resources:
            cpu_slots=held_slots,
            mem_mb=memory(300, 200),
        log:
            f"{LOGS}/pretrain_images.log",
        benchmark:
            f"{BENCH}/pretrain_images.tsv",
        shell:
            "amflow pretrain-images --params {params.file}"
            " > {log} 2>&1"


rule extract_frames:
    # Ahead of training jobs: AM flow runs wait for it, and it is short.
    priority: 10
    input:
        f"{DATASET_DIR}/{paths.DATASET_JSON}",
        code=code("extract"),
    output:
        f"{FRAMES_DIR}/{paths.FRAMES_SUMMARY}",
    params:
        file=params_file,
        dvc_params=tracked("datasets.{dataset}"),
        dvc_outs=lambda w: [FRAMES_DIR.format(dataset=w.dataset, spec=w.spec)],
    threads: JOB_CORES
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(300, 100),
        runtime=600,
    log:
        f"{LOGS}/extract_frames/{{dataset}}-{{spec}}.log",
    benchmark:
        f"{BENCH}/extract_frames/{{dataset}}-{{spec}}.tsv",
    shell:
        "amflow extract --params {params.file} --dataset {wildcards.dataset}"
        " > {log} 2>&1"
