# Training and evaluation, one job per (dataset, method, seed), plus the ablation runs.
#
# One thread per job by default: on a CPU, several single-threaded runs side by side use the cores
# better than one multi-threaded run (small models). Cluster profiles raise it (set-threads).


def train_inputs(wildcards, method=None):
    method = method or wildcards.method
    deps = [f"{DATA}/frames/{wildcards.dataset}/summary.json"] + backbone_inputs()
    if method == "amflow":  # only AM flow reads the camera decision and the cached transforms
        deps += [f"{RESULTS}/{wildcards.dataset}/camera_motion.json", f"{DATA}/motion/{wildcards.dataset}.npz"]
    return deps


def launcher(wildcards, resources):
    """Several GPUs: one process per GPU under torchrun (DDP); otherwise a plain process."""
    if int(resources.gpu) > 1:
        return f"torchrun --standalone --nproc_per_node {int(resources.gpu)} -m amflow.cli"
    return "amflow"


rule train:
    input:
        train_inputs,
    output:
        f"{RESULTS}/{{dataset}}/{{method}}/seed{{seed}}/train.json",
    params:
        launch=launcher,
        dvc_params=tracked("datasets.{dataset}", "sampling", "model", "train", "backbone", "camera_motion"),
    threads: 1
    resources:
        gpu=0,
    shell:
        "{params.launch} train --params {PARAMS} --dataset {wildcards.dataset} "
        "--method {wildcards.method} --seed {wildcards.seed}"


rule evaluate:
    input:
        f"{RESULTS}/{{dataset}}/{{method}}/seed{{seed}}/train.json",
    output:
        f"{RESULTS}/{{dataset}}/{{method}}/seed{{seed}}/metrics.json",
    params:
        dvc_params=tracked("datasets.{dataset}", "sampling"),
    threads: 1
    shell:
        "amflow evaluate --params {PARAMS} --dataset {wildcards.dataset} "
        "--method {wildcards.method} --seed {wildcards.seed}"


def ablation(wildcards):
    from amflow.workflow_plan import find_ablation

    return find_ablation(P, wildcards.axis, wildcards.value, wildcards.dataset, wildcards.seed)


rule train_ablation:
    input:
        lambda w: train_inputs(w, method="amflow"),
    output:
        f"{RESULTS}/ablations/{{axis}}/{{value}}/{{dataset}}/seed{{seed}}/train.json",
    params:
        launch=launcher,
        overrides=lambda w: ablation(w).set_args(),
        dvc_params=tracked("datasets.{dataset}", "sampling", "model", "train", "backbone", "camera_motion", "ablations"),
    threads: 1
    resources:
        gpu=0,
    shell:
        "{params.launch} train --params {PARAMS} --dataset {wildcards.dataset} --method amflow "
        "--seed {wildcards.seed} --run-dir {RESULTS}/ablations/{wildcards.axis}/{wildcards.value}/"
        "{wildcards.dataset}/seed{wildcards.seed} {params.overrides}"


rule evaluate_ablation:
    input:
        f"{RESULTS}/ablations/{{axis}}/{{value}}/{{dataset}}/seed{{seed}}/train.json",
    output:
        f"{RESULTS}/ablations/{{axis}}/{{value}}/{{dataset}}/seed{{seed}}/metrics.json",
    params:
        overrides=lambda w: ablation(w).set_args(),
        dvc_params=tracked("datasets.{dataset}", "sampling", "ablations"),
    threads: 1
    shell:
        "amflow evaluate --params {PARAMS} --dataset {wildcards.dataset} --method amflow "
        "--seed {wildcards.seed} --run-dir {RESULTS}/ablations/{wildcards.axis}/{wildcards.value}/"
        "{wildcards.dataset}/seed{wildcards.seed} {params.overrides}"
