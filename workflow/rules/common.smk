# Shared set-up: which params file drives the run, and the job lists derived from it.
#
# The params file is `params/default.yaml`, or the file given with `--configfile` (Snakemake's
# config then comes from the same file). It is validated by amflow's schema before any job runs.
import os
import shlex

from amflow import paths
from amflow.params import load_params
from amflow.workflow_plan import ablation_runs, table_runs

PARAMS_FILE = str(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "params/default.yaml"
P = load_params(PARAMS_FILE)
# Used directly in the shell commands, not passed as a param (params are rerun triggers, and the file's
# path must not be one: another file with the same values reuses every result); `tracked` below
# makes the values the trigger.
PARAMS = shlex.quote(PARAMS_FILE)
DATA = "data"
RESULTS = "results"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_\-]*",
    method="frame|aim|st_adapter|tpa|amflow",
    seed=r"\d+",
    axis=r"[a-z_]+",


def tracked(*keys):
    """The params a job depends on, as a dict key -> value (keys may name wildcards: "datasets.{dataset}").

    Given as the rule's ``params.dvc_params``: Snakemake reruns the job when one of these values
    changes (its "params" rerun trigger), and `amflow dvc-yaml` lists the keys as the DVC stage's params.
    """
    data = P.model_dump(mode="json")

    def values(wildcards):
        out = {}
        for key in keys:
            key = key.format(**dict(wildcards.items()))
            node = data
            for part in key.split("."):
                node = node[part]
            out[key] = node
        return out

    return values


def backbone_inputs(wildcards=None):
    return [str(paths.backbone_file(RESULTS))] if P.backbone.weights == "pretrain" else []


def train_inputs(wildcards, method=None):
    method = method or wildcards.method
    deps = [f"{DATA}/frames/{wildcards.dataset}/summary.json"] + backbone_inputs()
    if method == "amflow":  # only AM flow reads the camera decision and the cached transforms
        deps += [f"{RESULTS}/{wildcards.dataset}/camera_motion.json", f"{DATA}/motion/{wildcards.dataset}.npz"]
    return deps


# GPUs a training, evaluation or sweep job uses; 0 when the params keep training on the CPU. The
# SLURM profile sets them per rule; a local run that states the machine's GPUs (`--resources gpu=N`,
# workflow/profiles/local_gpu) then never starts two GPU jobs on one device. Without it Snakemake
# does not count GPUs, and every job would start on cuda:0.
GPUS_PER_JOB = 0 if P.train.device == "cpu" else 1


def launcher(wildcards, resources):
    """Several GPUs: one process per GPU under torchrun (DDP); otherwise a plain process."""
    if int(resources.gpu) > 1:
        return f"torchrun --standalone --nproc_per_node {int(resources.gpu)} -m amflow.cli"
    return "amflow"


def ablation(wildcards):
    from amflow.workflow_plan import find_ablation

    return find_ablation(P, wildcards.axis, wildcards.value, wildcards.dataset, wildcards.seed)


def run_dir_of(wildcards, output):
    """The run folder of a training or evaluation job: the folder of its first output."""
    return os.path.dirname(output[0])
