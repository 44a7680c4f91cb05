# Shared set-up: which params file drives the run, and the job lists derived from it.
#
# The params file is `params/default.yaml`, or the file given with `--configfile` (Snakemake's
# config then comes from the same file). It is validated by amflow's schema before any job runs.
import shlex

from amflow import paths
from amflow.params import load_params
from amflow.workflow_plan import ablation_runs, table_runs

PARAMS_FILE = str(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "params/default.yaml"
P = load_params(PARAMS_FILE)
PARAMS = shlex.quote(PARAMS_FILE)
DATA = "data"
RESULTS = "results"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_\-]*",
    method="frame|aim|st_adapter|tpa|amflow",
    seed=r"\d+",
    axis=r"[a-z_]+",


def dataset_params(wildcards):
    """The params keys a dataset-level stage depends on (DVC reads this)."""
    return [f"datasets.{wildcards.dataset}"]


def backbone_inputs(wildcards=None):
    return [str(paths.backbone_file(RESULTS))] if P.backbone.weights == "pretrain" else []
