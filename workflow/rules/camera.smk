# Camera-motion classification: decides the AM flow variant and caches the transforms it needs.


rule camera_motion:
    # Ahead of training jobs: AM flow runs wait for it, and it is short.
    priority: 10
    input:
        f"{DATA}/frames/{{dataset}}/summary.json",
    output:
        json=f"{RESULTS}/{{dataset}}/camera_motion.json",
        png=f"{RESULTS}/{{dataset}}/camera_motion.png",
        motion=f"{DATA}/motion/{{dataset}}.npz",
    params:
        dvc_params=tracked("datasets.{dataset}", "camera_motion"),
    threads: workflow.cores
    log:
        "logs/camera_motion/{dataset}.log",
    shell:
        "amflow camera-motion --params {PARAMS} --dataset {wildcards.dataset}"
        " > {log} 2>&1"
