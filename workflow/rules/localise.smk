# SynthMotion's motion ground truth, and how well AM flow finds the actor without training.
#   snakemake --cores 8 results/synth_moving/localisation/localisation.csv


rule ground_truth:
    input:
        f"{DATA}/{{dataset}}/dataset.json",
    output:
        str(paths.ground_truth_file(DATA, "{dataset}")),
    params:
        dvc_params=tracked("datasets.{dataset}"),
    log:
        "logs/ground_truth/{dataset}.log",
    shell:
        "amflow ground-truth --params {PARAMS} --dataset {wildcards.dataset}"
        " > {log} 2>&1"


rule localise:
    input:
        str(paths.ground_truth_file(DATA, "{dataset}")),
        f"{DATA}/frames/{{dataset}}/summary.json",
        str(paths.motion_file(DATA, "{dataset}")),
        backbone_inputs,
    output:
        csv=str(paths.localisation_dir(RESULTS, "{dataset}") / "localisation.csv"),
        png=str(paths.localisation_dir(RESULTS, "{dataset}") / "localisation.png"),
    params:
        dvc_params=tracked("datasets.{dataset}", "sampling", "backbone", "model.am_flow"),
    threads: workflow.cores
    log:
        "logs/localise/{dataset}.log",
    shell:
        "amflow localise --params {PARAMS} --dataset {wildcards.dataset}"
        " > {log} 2>&1"
