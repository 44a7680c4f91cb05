# SynthMotion's motion ground truth, and how well AM flow finds the actor without training.
#   snakemake --cores 8 results/default/synth_moving/localisation/localisation.csv


rule ground_truth:
    input:
        f"{DATASET_DIR}/{paths.DATASET_JSON}",
        code=code("ground-truth"),
    output:
        str(paths.ground_truth_file(DATA, paths.data_key("{dataset}", "{spec}"))),
    params:
        file=params_file,
        dvc_params=tracked("datasets.{dataset}"),
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(500),
    log:
        f"{LOGS}/ground_truth/{{dataset}}-{{spec}}.log",
    benchmark:
        f"{BENCH}/ground_truth/{{dataset}}-{{spec}}.tsv",
    shell:
        "amflow ground-truth --params {params.file} --dataset {wildcards.dataset}"
        " > {log} 2>&1"


rule localise:
    input:
        lambda w: ground_truth_input(w.dataset),
        lambda w: frames_summary(w.dataset),
        str(paths.motion_file(RESULTS, "{dataset}")),
        backbone_inputs,
        code=code("localise"),
    output:
        csv=str(paths.localisation_dir(RESULTS, "{dataset}") / paths.LOCALISATION_CSV),
        probe=str(paths.localisation_dir(RESULTS, "{dataset}") / paths.LABEL_PROBE_CSV),
        png=report(str(paths.localisation_dir(RESULTS, "{dataset}") / paths.LOCALISATION_PNG),
                   caption=caption("localisation"), category="Localisation", labels={"dataset": "{dataset}"}),
    params:
        file=params_file,
        dvc_params=identified(lambda w: identity.localisation(P, w.dataset)),
    threads: JOB_CORES
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(1600),
    log:
        f"{LOGS}/localise/{{dataset}}.log",
    benchmark:
        f"{BENCH}/localise/{{dataset}}.tsv",
    shell:
        "amflow localise --params {params.file} --dataset {wildcards.dataset}"
        " > {log} 2>&1"
