# AM Flow pipeline. The rules live in workflow/rules/; see docs/architecture.md.
#
# The config is a params file: params/default.yaml, or what --configfile and --config give (see
# workflow/rules/common.smk for how they combine); it is validated by amflow's schema.
import copy

# Before `configfile:`, Snakemake's `config` holds only what the command line gave.
COMMAND_LINE_CONFIG = copy.deepcopy(config)


configfile: "params/default.yaml"


include: "workflow/rules/common.smk"


# The default target: `snakemake --cores 8` builds table 1 of the params in use (and, first, table 1 of
# its first seed alone: rule table1_first_seed).
rule all:
    input:
        f"{RESULTS}/{paths.TABLE1_FIRST_SEED_CSV}",
        f"{RESULTS}/{paths.TABLE1_CSV}",
    default_target: True


# `snakemake --cores 8 results/table1.csv`: table 1 of the params in use, built in its own namespace
# (results/<name>/table1.csv) and copied to this fixed place, so the main command and scripts reading
# it need not know the params file's name. The copy is the table of the params last asked for.
rule latest_table1:
    input:
        table=f"{RESULTS}/{paths.TABLE1_CSV}",
        # the run's first answer, on the way (see rule table1_first_seed)
        first_seed=f"{RESULTS}/{paths.TABLE1_FIRST_SEED_CSV}",
    output:
        f"results/{paths.TABLE1_CSV}",
    localrule: True
    threads: 1
    resources:
        cpu_slots=held_slots,
        mem_mb=memory(100),
    log:
        f"{LOGS}/latest_table1.log",
    benchmark:
        f"{BENCH}/latest_table1.tsv",
    shell:
        "cp -v {input.table} {output} > {log} 2>&1"


# The whole run's CPU seconds, Snakemake's own process included, beside its log (bench/bench_pipeline.py
# gives the overhead share of both: the jobs' commands, and the whole run).
onsuccess:
    record_run_cpu(log)


include: "workflow/rules/data.smk"
include: "workflow/rules/camera.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/localise.smk"
