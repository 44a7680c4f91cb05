# AM Flow pipeline. The rules live in workflow/rules/; see docs/architecture.md.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/camera.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/localise.smk"
