# Shared set-up: the params that drive the run, where everything goes, and the job lists.
#
# The params are Snakemake's config, resolved and validated by amflow's schema before any job runs:
# params/default.yaml (the Snakefile's `configfile:`), unless the command line gives a complete params
# file (`--configfile params/tiny.yaml`, a file with `datasets`), or a file that `extends:` another;
# `--config key=value` overrides go on top (amflow.params_io.resolve_workflow_config).
import os
import sys

from amflow import identity, methods, paths
from amflow.benchmark_file import record_run_cpu
from amflow.import_graph import code_stamp
from amflow.parallel import machine_memory_mb, usable_cores
from amflow.params import GROUND_TRUTH_CONTROLS
from amflow.params_io import ParamsError, resolve_workflow_config, validate, write_resolved
from amflow.workflow_plan import ablation_runs, find_ablation, reference_runs, table_runs

DEFAULT_PARAMS = "params/default.yaml"


def given_config():
    """What the command line gave, for the config's errors: each --configfile by name (else the default),
    and whether --config added values."""
    settings = workflow.config_settings
    here = os.getcwd()
    files = [f"{os.path.relpath(f) if os.path.abspath(f).startswith(here + os.sep) else f} (--configfile)"
             for f in settings.configfiles]
    return " and ".join(files or [DEFAULT_PARAMS]) + (" with --config values" if settings.config else "")


try:
    P = validate(resolve_workflow_config(COMMAND_LINE_CONFIG, DEFAULT_PARAMS, given_config()), given_config())
except ParamsError as exc:
    sys.exit(f"error: {exc}")
# `config` becomes the validated params (defaults filled in): what the jobs and the report see.
config.clear()
config.update(P.model_dump(mode="json"))
# The jobs read these values from a file named by their content (`params_file` below).
PARAMS = str(write_resolved(P, paths.RESOLVED_PARAMS_DIR))
DATA = "data"
RESULTS = str(paths.results_root("results", P.name))
LOGS = str(paths.logs_root("logs", P.name))
# Every rule's `benchmark:` file (wall and CPU time, memory per job): bench/bench_pipeline.py reads them.
BENCH = str(paths.benchmarks_root("benchmarks", P.name))
# A multi-threaded job's threads: the cores this machine has, up to 8. Snakemake passes a job's threads as
# OMP_NUM_THREADS, which torch and amflow's worker pools follow, so a job never starts more threads than
# cores (more only thrash); with fewer --cores Snakemake scales it down, and cluster profiles set their own.
JOB_CORES = min(8, usable_cores())
# A run that counts cores (`--cores N`) runs its jobs on this machine, and the two caps below fit them to
# it. A run given a number of jobs (`--jobs N`: a cluster profile's `jobs:`, or `-j N` here) asks for N
# jobs at once and gets them: Snakemake picks the executor only after reading the Snakefile, so this is
# what tells a cluster run apart here. A cluster job's own Snakemake on its node runs that one job.
RUNS_HERE = workflow.nodes is None and not workflow.remote_exec
# Jobs at once: every job holds its threads of CPU_SLOTS, which is this machine's cores, whatever --cores
# says: `--cores 8` on 2 cores would otherwise start 8 single-thread trainings of about 1.1 GB each,
# slower together than two at a time. `--resources cpu_slots=N` asks for N; a machine with 8 or 64 cores
# gets them all.
CPU_SLOTS = "cpu_slots"
if RUNS_HERE and CPU_SLOTS not in workflow.global_resources:
    workflow.global_resources[CPU_SLOTS] = usable_cores()


def held_slots(wildcards, threads):
    """Every rule's ``resources: cpu_slots``: a job holds one slot per thread (see CPU_SLOTS)."""
    return threads


# Memory: each job declares the most it holds (``resources: mem_mb``, `memory`), and a local run
# starts no jobs whose memory together exceeds the machine's (`--resources mem_mb=N` sets another
# limit), so a machine with many cores and little memory runs fewer jobs at once instead of swapping.
MEM_MB = "mem_mb"
if RUNS_HERE and MEM_MB not in workflow.global_resources:
    workflow.global_resources[MEM_MB] = machine_memory_mb()


def memory(base_mb, per_thread_mb=0):
    """A rule's ``resources: mem_mb``: ``base_mb`` plus ``per_thread_mb`` per thread (the stages that
    work in parallel start one worker process per thread). The figures are the peak memory of the job's
    processes together in the embedded default, measured at 1 and 2 threads, with about a third more:
    params with a larger model or longer clips need more (`--set-resources train:mem_mb=N`, or a
    profile's set-resources, as workflow/profiles/slurm does)."""
    return lambda wildcards, threads: base_mb + per_thread_mb * threads


wildcard_constraints:
    dataset=paths.DATASET_NAME_PATTERN,
    spec=paths.SPEC_HASH_RE,
    method="|".join(methods.names()),
    seed=r"\d+",
    axis=r"[a-z_]+",


def params_file(wildcards, input):
    """Every rule's ``params.file``, the resolved params file its command reads (``--params {params.file}``).

    Its path changes with any value, so it must not be a rerun trigger: Snakemake leaves params derived
    from a job's input out of its "params" trigger. The values a job depends on are the trigger
    (``params.dvc_params``, see `tracked` and `identified`), so another params file with the same values
    reuses every result.
    """
    return PARAMS


def code(command):
    """A rule's input ``code``: the stamp of the source files ``amflow <command>`` imports
    (:func:`amflow.import_graph.code_stamp`), so an edit to one of them reruns the jobs whose command
    imports it, and no other (the DVC stages of `amflow dvc-yaml` get the files themselves as deps)."""
    return os.path.relpath(code_stamp(workflow.basedir, command, paths.CODE_STAMPS_DIR))


def tracked(*keys):
    """A rule's ``params.dvc_params`` for a job defined by whole params sections (keys may name wildcards:
    "datasets.{dataset}"): key -> value. Snakemake reruns the job when one of these values changes (its
    "params" rerun trigger), and `amflow dvc-yaml` lists the keys as the DVC stage's params."""
    return lambda wildcards: identity.select(P, [key.format(**dict(wildcards.items())) for key in keys])


def identified(of):
    """A rule's ``params.dvc_params`` for a job whose run has an identity (:mod:`amflow.identity`,
    ``of(wildcards)``): its params, the same that its digest, its checkpoint check and its MLflow run
    take, so a key that does not define the run (``train.num_workers``) reruns nothing."""
    return lambda wildcards: of(wildcards).params


# Output patterns: the data folders carry the dataset's spec hash as the wildcard {spec}.
DATASET_DIR = str(paths.dataset_dir(DATA, paths.data_key("{dataset}", "{spec}")))
FRAMES_DIR = str(paths.frames_dir(DATA, paths.data_key("{dataset}", "{spec}")))
RUN_DIR = str(paths.run_dir(RESULTS, "{dataset}", "{method}", "{seed}"))
ABLATION_RUN_DIR = str(paths.ablation_run_dir(RESULTS, "{axis}", "{value}", "{dataset}", "{seed}"))
PLOTS = str(paths.plots_dir(RESULTS))


def frames_summary(dataset):
    """The frame cache's last-written file, for this params file's spec of ``dataset``."""
    return str(paths.frames_dir(DATA, paths.dataset_key(P, dataset)) / paths.FRAMES_SUMMARY)


def dataset_lists(wildcards):
    """A list dataset's lists (those present): DVC deps of its preparation. ancient(): their contents are
    in the data key already, so an edit plans another dataset folder, and a new time alone reruns nothing."""
    return [ancient(str(f)) for f in paths.list_files(P.dataset(wildcards.dataset)) if f.is_file()]


def pretrain_images_info():
    return str(paths.pretrain_images_dir(DATA, P) / paths.PRETRAIN_IMAGES_INFO)


def backbone_inputs(wildcards=None):
    return [str(paths.backbone_file(RESULTS))] if P.backbone.weights == "pretrain" else []


def ground_truth_input(dataset):
    """SynthMotion's ground truth for this params file's spec of ``dataset``."""
    return str(paths.ground_truth_file(DATA, paths.dataset_key(P, dataset)))


def train_inputs(wildcards, method=None, control=None):
    method = method or wildcards.method
    deps = [frames_summary(wildcards.dataset)] + backbone_inputs()
    needs = methods.get(method)
    if needs.camera_motion:  # the camera decision and the cached transforms
        camera = paths.camera_dir(RESULTS, wildcards.dataset)
        deps += [str(camera / paths.CAMERA_JSON), str(paths.motion_file(RESULTS, wildcards.dataset))]
    if needs.ground_truth_controls and (control or P.model.am_flow.control) in GROUND_TRUTH_CONTROLS:
        deps.append(ground_truth_input(wildcards.dataset))  # these controls read the actor's coverage
    return deps


def ablation_inputs(wildcards):
    """An ablation run's inputs: those of its method's run, with the ablation's own AM flow control."""
    run = ablation(wildcards)
    return train_inputs(wildcards, method=run.method, control=run.overrides.get("model.am_flow.control"))


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


# The first seed's runs and its table 1 go before the other seeds' runs: a complete one-seed table 1 is
# the run's first answer (rule table1_first_seed), the full table its last. Below the data, camera and
# backbone stages (10, 20), which every run waits for.
FIRST_SEED_PRIORITY = 5


def first_seed_first(wildcards):
    """The priority of a table run's training and evaluation jobs (see FIRST_SEED_PRIORITY)."""
    return FIRST_SEED_PRIORITY if int(wildcards.seed) == P.seeds[0] else 0


def ablation(wildcards):
    return find_ablation(P, wildcards.axis, wildcards.value, wildcards.dataset, wildcards.seed)


def ablation_identity(stage):
    """The identity (``identity.training`` or ``identity.evaluation``) of an ablation job's run: its
    method's, with its overrides; another ablation value is another run, and leaves it alone."""
    def of(wildcards):
        run = ablation(wildcards)
        return stage(run.params(P), wildcards.dataset, run.method, wildcards.seed)

    return of


def run_dir_of(wildcards, output):
    """The run folder of a training or evaluation job: the folder of its first output."""
    return os.path.dirname(output[0])


def caption(name):
    """A report caption, workflow/report/<name>.rst (paths in rules are relative to workflow/rules/)."""
    return f"../report/{name}.rst"



def training_evaluation(run_dir):
    """The evaluation files that `amflow train --evaluate` writes into the run's evaluated_in_training/
    (files, not a directory() output: DVC then versions each file as the evaluation stage reads it)."""
    return {f"trained_{name.replace('.', '_')}": f"{run_dir}/{paths.TRAINING_EVALUATION_DIR}/{name}"
            for name in paths.EVALUATION_FILES}


def evaluation_outputs(run_dir, category):
    """The files an evaluation writes into a run folder; the figures go into Snakemake's report."""
    labels = {"dataset": "{dataset}", "seed": "{seed}"}
    labels.update({"method": "{method}"} if category == "Runs" else {"ablation": "{axis}={value}"})
    return dict(
        metrics=f"{run_dir}/{paths.METRICS_JSON}",
        scores=f"{run_dir}/{paths.SCORES_JSON}",
        per_class=f"{run_dir}/{paths.PER_CLASS_CSV}",
        predictions=f"{run_dir}/{paths.PREDICTIONS_CSV}",
        confusion=report(f"{run_dir}/{paths.CONFUSION_PNG}", caption=caption("confusion"), category=category,
                         subcategory="confusion matrices", labels=labels),
        curves=report(f"{run_dir}/{paths.CURVES_PNG}", caption=caption("curves"), category=category,
                      subcategory="training curves", labels=labels),
    )
