# Backbone pretraining for the embedded default (real configurations load DINOv2 weights instead).


if P.backbone.weights == "pretrain":

    rule pretrain_backbone:
        input:
            pretrain_images_info(),
        output:
            weights=str(paths.backbone_file(RESULTS)),
            metrics=str(paths.backbone_dir(RESULTS) / paths.BACKBONE_METRICS),
        params:
            dvc_params=tracked("backbone", "pretrain", "pretrain_images"),
        threads: 8
        resources:
            gpu=GPUS_PER_JOB,
        log:
            f"{LOGS}/pretrain_backbone.log",
        shell:
            "amflow pretrain-backbone --params {PARAMS}"
            " > {log} 2>&1"
