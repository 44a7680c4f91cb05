"""The columns of table 1 and of the ablation table, as amflow/report/tables.py's docstring documents
them, written out (not imported) so that a change of the scheme has to change the tests too."""

# Mean and sample std over the seeds of one (dataset, method) or one ablation setting.
SEED_STATS = [
    "top1_pct_mean", "top1_pct_std", "top5_pct_mean", "top5_pct_std",
    "mean_class_acc_pct_mean", "mean_class_acc_pct_std", "reversed_top1_pct_mean", "reversed_top1_pct_std",
    "forward_top1_paired_pct_mean", "forward_top1_paired_pct_std",
    "both_directions_top1_pct_mean", "both_directions_top1_pct_std",
    "epochs_to_90pct_mean", "epochs_to_90pct_std", "train_time_s_mean", "train_time_s_std",
    "train_clips_per_s_mean", "train_clips_per_s_std",
]
# Properties of the model, the same for every seed.
MODEL = ["trainable_params", "total_params", "gflops_per_clip", "am_flow_variant", "views"]

# The paired top-1 difference to tpa (mean and std over seeds of the per-seed differences).
PAIRED = ["top1_vs_tpa_pct_mean", "top1_vs_tpa_pct_std"]
# Table 1 only: convergence to tpa's final validation top-1.
CONVERGENCE = ["target_val_top1_pct", "epochs_to_target_mean", "epochs_to_target_std", "time_to_target_s_mean",
               "time_to_target_s_std", "reaching_target_seeds"]

TABLE1_COLUMNS = ["dataset", "method", "n_seeds", *SEED_STATS, *MODEL, *PAIRED, *CONVERGENCE]
ABLATION_COLUMNS = ["axis", "value", "dataset", "n_seeds", *SEED_STATS, *MODEL, *PAIRED]
