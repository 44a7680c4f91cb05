# Backbone pretraining for the embedded default (real configurations load DINOv2 weights instead).


rule pretrain_backbone:
    input:
        f"{DATA}/pretrain_images/info.json",
    output:
        weights=str(paths.backbone_file(RESULTS)),
        metrics=f"{RESULTS}/backbone/metrics.json",
    params:
        dvc_params=tracked("backbone", "pretrain", "pretrain_images"),
    threads: workflow.cores
    resources:
        gpu=GPUS_PER_JOB,
    log:
        "logs/pretrain_backbone.log",
    shell:
        "amflow pretrain-backbone --params {PARAMS}"
        " > {log} 2>&1"
