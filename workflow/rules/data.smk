# Datasets: generate (SynthMotion) or download/verify (real datasets), then decode into the frame cache.


rule prepare_dataset:
    output:
        f"{DATA}/{{dataset}}/dataset.json",
    params:
        dvc_params=tracked("datasets.{dataset}"),
        dvc_outs=lambda w: [f"{DATA}/{w.dataset}"],
    resources:
        runtime=240,
    log:
        "logs/prepare_dataset/{dataset}.log",
    shell:
        "amflow prepare --params {PARAMS} --dataset {wildcards.dataset}"
        " > {log} 2>&1"


rule pretrain_images:
    output:
        f"{DATA}/pretrain_images/info.json",
    params:
        dvc_params=tracked("pretrain_images"),
        dvc_outs=[f"{DATA}/pretrain_images"],
    log:
        "logs/pretrain_images.log",
    shell:
        "amflow pretrain-images --params {PARAMS}"
        " > {log} 2>&1"


rule extract_frames:
    # Ahead of training jobs: AM flow runs wait for it, and it is short.
    priority: 10
    input:
        f"{DATA}/{{dataset}}/dataset.json",
    output:
        f"{DATA}/frames/{{dataset}}/summary.json",
    params:
        dvc_params=tracked("datasets.{dataset}"),
        dvc_outs=lambda w: [f"{DATA}/frames/{w.dataset}"],
    threads: workflow.cores
    resources:
        runtime=600,
    log:
        "logs/extract_frames/{dataset}.log",
    shell:
        "amflow extract --params {PARAMS} --dataset {wildcards.dataset}"
        " > {log} 2>&1"
