# Datasets: generate (SynthMotion) or download/verify (real datasets), then decode into the frame cache.
# Data folders are keyed by the spec's hash ({spec}), so params files with equal specs share them.


rule prepare_dataset:
    output:
        f"{DATASET_DIR}/{paths.DATASET_JSON}",
    params:
        dvc_params=tracked("datasets.{dataset}"),
        dvc_outs=lambda w: [DATASET_DIR.format(dataset=w.dataset, spec=w.spec)],
    threads: 1
    resources:
        runtime=240,
    log:
        f"{LOGS}/prepare_dataset/{{dataset}}-{{spec}}.log",
    shell:
        "amflow prepare --params {PARAMS} --dataset {wildcards.dataset}"
        " > {log} 2>&1"


if P.pretrain_images is not None:

    rule pretrain_images:
        output:
            pretrain_images_info(),
        params:
            dvc_params=tracked("pretrain_images"),
            dvc_outs=[str(paths.pretrain_images_dir(DATA, P))],
        threads: 1
        log:
            f"{LOGS}/pretrain_images.log",
        shell:
            "amflow pretrain-images --params {PARAMS}"
            " > {log} 2>&1"


rule extract_frames:
    # Ahead of training jobs: AM flow runs wait for it, and it is short.
    priority: 10
    input:
        f"{DATASET_DIR}/{paths.DATASET_JSON}",
    output:
        f"{FRAMES_DIR}/{paths.FRAMES_SUMMARY}",
    params:
        dvc_params=tracked("datasets.{dataset}"),
        dvc_outs=lambda w: [FRAMES_DIR.format(dataset=w.dataset, spec=w.spec)],
    threads: 8
    resources:
        runtime=600,
    log:
        f"{LOGS}/extract_frames/{{dataset}}-{{spec}}.log",
    shell:
        "amflow extract --params {PARAMS} --dataset {wildcards.dataset}"
        " > {log} 2>&1"
