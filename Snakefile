# AM Flow pipeline. The rules live in workflow/rules/; see docs/architecture.md.
#
# The config is a params file: params/default.yaml, or what --configfile and --config give (see
# workflow/rules/common.smk for how they combine); it is validated by amflow's schema.
import copy

# Before `configfile:`, Snakemake's `config` holds only what the command line gave.
COMMAND_LINE_CONFIG = copy.deepcopy(config)


configfile: "params/default.yaml"


include: "workflow/rules/common.smk"


# The default target: `snakemake --cores 8` builds table 1 of the params in use.
rule all:
    input:
        f"{RESULTS}/table1.csv",
    default_target: True


include: "workflow/rules/data.smk"
include: "workflow/rules/camera.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/localise.smk"
