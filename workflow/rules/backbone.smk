# Backbone pretraining for the embedded default (real configurations load DINOv2 weights instead).


if P.backbone.weights == "pretrain":

    rule pretrain_backbone:
        input:
            pretrain_images_info(),
            code=code("pretrain-backbone"),
        output:
            weights=str(paths.backbone_file(RESULTS)),
            metrics=str(paths.backbone_dir(RESULTS) / paths.BACKBONE_METRICS),
        params:
            file=params_file,
            dvc_params=identified(lambda w: identity.pretraining(P)),
        priority: 20  # the critical path: every training waits for the backbone, only amflow for the camera
        threads: JOB_CORES
        resources:
            cpu_slots=held_slots,
            mem_mb=memory(1600),
            gpu=GPUS_PER_JOB,
        log:
            f"{LOGS}/pretrain_backbone.log",
        benchmark:
            f"{BENCH}/pretrain_backbone.tsv",
        shell:
            "amflow pretrain-backbone --params {params.file}"
            " > {log} 2>&1"
