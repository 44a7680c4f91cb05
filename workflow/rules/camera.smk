# Camera-motion classification: decides the AM flow variant and caches the transforms it needs.


rule camera_motion:
    # Ahead of training jobs: AM flow runs wait for it, and it is short.
    priority: 10
    input:
        lambda w: frames_summary(w.dataset),
        code=code("camera-motion"),
    output:
        json=str(paths.camera_dir(RESULTS, "{dataset}") / paths.CAMERA_JSON),
        png=report(str(paths.camera_dir(RESULTS, "{dataset}") / paths.CAMERA_PNG), caption=caption("camera_motion"),
                   category="Camera motion", labels={"dataset": "{dataset}"}),
        motion=str(paths.motion_file(RESULTS, "{dataset}")),
    params:
        file=params_file,
        dvc_params=identified(lambda w: identity.camera_motion(P, w.dataset)),
    threads: JOB_CORES
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(350, 250),
    log:
        f"{LOGS}/camera_motion/{{dataset}}.log",
    benchmark:
        f"{BENCH}/camera_motion/{{dataset}}.tsv",
    shell:
        "amflow camera-motion --params {params.file} --dataset {wildcards.dataset}"
        " > {log} 2>&1"
