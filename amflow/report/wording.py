"""The report's sentences: :data:`TEMPLATES` holds every verdict's wording (format strings), and the
functions below fill them from the records of :mod:`amflow.report.verdicts`. The report and the
README's results section both say their claims through this module, so they say them alike.
"""
from __future__ import annotations

from typing import Optional

from amflow import paths

from amflow.report.verdicts import (NO, YES, AxisRange, Claims, Comparison, Control, Epochs90, FairClaim,
                                    FrameOrder, Overlap, Paired, Ranking, VariantResult)

TEMPLATES = {
    # two methods (verdicts.compare); {a} and {b} are the names as the sentence shows them
    "beats": "{a} beats {b} ({b_mean}) by {diff}",
    "loses": "{a} does not beat {b} ({b_mean}): it is {diff} lower",
    "ties": "{a} ties with {b} ({b_mean})",
    "not_clear": " (within one seed standard deviation: not a clear difference)",
    # a paired difference (verdicts.paired)
    "paired": "{mean:+.2f} ± {std:.2f} points over {n} seeds",
    "paired_one_seed": "{mean:+.2f} points (one seed, no error estimate)",
    "paired_missing": "no tpa run with the same seeds",
    # the claims (verdicts.claims, variant_results, controls)
    "claims_missing": "- `{dataset}`: `amflow` and `tpa` are not both in table 1, so the claims are not measured.",
    "helps": "- **AM flow helps** on `{dataset}`: {verdict}. Paired top-1 difference `amflow` − `tpa` (the same "
             "adapter without AM flow): {figure}.",
    "faster": "- **AM flow converges faster** on `{dataset}`: {verdict}. {reach}.",
    "reach": "`amflow` reaches `tpa`'s final validation top-1 ({target}) in {amflow_epochs} ({amflow_seeds} seeds), "
             "`tpa` in {tpa_epochs} ({tpa_seeds} seeds)",
    "no_target": "no target",
    "variant_claim": "- **The camera-matched variant helps**: {text}",
    "variant_claim_one": "on `{dataset}`, {comparison}",
    "variant_unmeasured": "not measured by this run: the variant ablation is in `{ablations}` "
                          "(`snakemake --cores 8 ablations`).",
    "variant_no_pair": "the variant ablation has no static and aligned pair.",
    "oracle": "- **Control `oracle`** (the actor's true coverage in place of AM flow) on `{dataset}` against `tpa`: "
              "{figure}; beats `tpa`: {verdict}, {meaning}.",
    "oracle_yes": "so saliency of this kind can help here",
    "oracle_no": "so saliency of this kind cannot help on this benchmark, as far as these seeds tell",
    "oracle_unresolved": "so whether saliency can help here is not resolved",
    "shuffled": "- **Control `shuffled`** (AM flow's scores permuted across patches) on `{dataset}` against `tpa`: "
                "{figure}.",
    "verdict_rule": "A verdict is *yes* only when the difference minus its seed standard deviation is above 0; "
                    "*not resolved* means the seed-to-seed spread covers 0.",
    # the seed spreads (verdicts.overlaps)
    "one_seed": "On `{dataset}`, one seed per method: no spread, so no ranking of methods can be trusted.",
    "overlap": "On `{dataset}`, the seed spreads (mean ± std of top-1) overlap for {pairs}: their order is within "
               "the seed-to-seed variation.",
    "no_overlap": "On `{dataset}`, no two methods' seed spreads overlap.",
    # table 1 (verdicts.ranking)
    "tie_best": "On `{dataset}`, {methods} tie for the best top-1 ({top1}).",
    "best": "On `{dataset}`, the best top-1 is `{best}` with {top1}, ahead of `{second}` ({second_top1}) by {margin}.",
    "only": "On `{dataset}`, only `{best}` was run: {top1}.",
    "amflow_rank": " AM flow (`amflow`, {variant} variant) reaches {top1} and ranks {rank} of {n}{against}.",
    "frame": " The order-blind `frame` baseline reaches {top1}; {above} of {n} temporal methods are above it.",
    # time-reversed clips (verdicts.frame_order)
    "frame_order": "On `{dataset}`, {users} of {n} methods are right both ways on some clips{most}.",
    "frame_order_most": " (most: `{method}`, {share})",
    "frame_blind": " The `frame` baseline is right both ways on {share} of the clips, as a model that ignores frame "
                   "order must be.",
    "frame_not_blind": " The `frame` baseline is right both ways on {share} of the clips, although a model that "
                       "ignores frame order cannot be: check the evaluation.",
    "amflow_both": " `amflow` is right both ways on {share}{against}.",
    # epochs to 90% of the final accuracy (verdicts.epochs_to_90)
    "epochs90": "On `{dataset}`, epochs to reach 90% of the final validation accuracy: {epochs}; fewest: {fewest}.",
    "epochs90_amflow": " Of the {n} other methods, `amflow` needs fewer epochs than {fewer}, as many as {same} "
                       "and more than {more}{meaning}.",
    # epochs90_<verdict>, the verdict's spaces as underscores
    "epochs90_yes": ", which supports the faster-convergence claim here",
    "epochs90_no": ", so the faster-convergence claim is not supported here",
    "epochs90_in_part": ", so the faster-convergence claim holds only in part here",
    # the variant ablation (verdicts.variant_results)
    "variant": "On `{dataset}` ({camera})",
    "variant_pair": ", aligned reaches {aligned} and static {static}: {comparison}",
    "aligned_beats": "aligned beats static by {diff}",
    "aligned_loses": "aligned does not beat static (it is {diff} lower)",
    "aligned_ties": "they tie",
    # aligned_<outcome>_not_clear: the same within one seed standard deviation
    "aligned_beats_not_clear": "aligned beats static by {diff} (within one seed standard deviation: not a clear "
                               "difference)",
    "aligned_loses_not_clear": "aligned does not beat static (it is {diff} lower, within one seed standard "
                               "deviation: not a clear difference)",
    "moving_helps": ", as camera-motion compensation should on a moving camera",
    "moving_does_not": ", although this is the dataset where camera-motion compensation should help",
    "static_camera": "; with a static camera the transforms are near identity, so a small gap is expected",
    "against_none": " Against no AM flow: {comparison}.",
    # any other ablation axis (verdicts.axis_ranges)
    "axis_one": "On `{dataset}`, {axis} = {best} reaches {top1}.",
    "axis": "On `{dataset}`, the best {axis} setting is `{best}` ({top1}) and the worst `{worst}` ({worst_top1}), "
            "a spread of {spread}.",
    # the fair test (verdicts.fair_test_claims)
    "fair": "- On `{dataset}` with `{integration}`: **{claim}**: {verdict}. {figure}.",
    "fair_footprint": "knowing where the actor is helps (footprint oracle against tpa)",
    "fair_footprint_uniform": "the gain comes from where the weights point (footprint against uniform)",
    "fair_control": "{scores} beats tpa",
    "fair_variant": "AM flow helps ({setting} variant against tpa)",
    "probe": "; a linear probe on these scores alone reaches {accuracy:.1f}% val top-1",
    "share": "; it recovers {share}{std} of the footprint oracle's gain ({seeds} seeds where that oracle gains)",
}
CAMERAS = {"aligned": "moving camera", "static": "static camera", None: "camera unknown"}
# What each fair-test control's scores are.
CONTROL_SCORES = {"shuffled": "AM flow's scores permuted across patches",
                  "rank_matched": "AM flow's values ranked by the actor's coverage",
                  "uniform": "uniform scores (no location)",
                  "oracle": "the actor's coverage frame by frame (its trajectory)"}


def say(name: str, **fields) -> str:
    return TEMPLATES[name].format(**fields)


def pct(x: float) -> str:
    return f"{x:.2f}%"


def pts(x: float) -> str:
    return f"{abs(x):.2f} points"


def comparison(c: Comparison, a: Optional[str] = None, b: Optional[str] = None) -> str:
    """'a beats b ...' with the caveat when not clear; ``a``/``b``: the names as shown (default: in code)."""
    name = "beats" if c.diff > 0 else "loses" if c.diff < 0 else "ties"
    text = say(name, a=a or f"`{c.a}`", b=b or f"`{c.b}`", b_mean=pct(c.b_mean), diff=pts(c.diff))
    return text + ("" if c.clear else TEMPLATES["not_clear"])


def paired(p: Paired) -> str:
    if p.mean is None:
        return TEMPLATES["paired_missing"]
    if p.std is None:
        return say("paired_one_seed", mean=p.mean)
    return say("paired", mean=p.mean, std=p.std, n=p.n_seeds)


# --------------------------------------------------------------------------- the claims
def claim_lines(claims: list[Claims], variants: Optional[list[VariantResult]], controls: list[Control]) -> list[str]:
    """The claims, one line each (then the verdict rule); ``variants`` None: no variant ablation."""
    lines = []
    for c in claims:
        if c.helps is None:
            lines.append(say("claims_missing", dataset=c.dataset))
            continue
        lines.append(say("helps", dataset=c.dataset, verdict=c.helps.verdict, figure=paired(c.helps)))
        f = c.faster
        reach = TEMPLATES["no_target"] if f.target is None else say(
            "reach", target=pct(f.target),
            amflow_epochs="no epoch" if f.amflow_epochs is None else f"{f.amflow_epochs:.2f} epochs",
            amflow_seeds="/".join(map(str, f.amflow_reaching)),
            tpa_epochs="no epoch" if f.tpa_epochs is None else f"{f.tpa_epochs:.2f}",
            tpa_seeds="/".join(map(str, f.tpa_reaching)))
        lines.append(say("faster", dataset=c.dataset, verdict=f.verdict, reach=reach))
    lines.append(say("variant_claim", text=variant_claim(variants)))
    lines += [control_line(c) for c in controls]
    return lines + ["", TEMPLATES["verdict_rule"], ""]


def variant_claim(variants: Optional[list[VariantResult]]) -> str:
    if variants is None:
        return say("variant_unmeasured", ablations=paths.ABLATIONS_CSV)
    parts = [say("variant_claim_one", dataset=v.dataset,
                 comparison=comparison(v.aligned_vs_static, "aligned", "static"))
             for v in variants if v.aligned_vs_static is not None]
    return ("; ".join(parts) + ".") if parts else TEMPLATES["variant_no_pair"]


def control_line(c: Control) -> str:
    if c.control == "oracle":
        meaning = TEMPLATES["oracle_yes" if c.paired.verdict == YES else "oracle_no" if c.paired.verdict == NO
                            else "oracle_unresolved"]
        return say("oracle", dataset=c.dataset, figure=paired(c.paired), verdict=c.paired.verdict, meaning=meaning)
    return say("shuffled", dataset=c.dataset, figure=paired(c.paired))


# --------------------------------------------------------------------------- paragraphs
def overlap_paragraph(overlaps: list[Overlap]) -> str:
    out = []
    for o in overlaps:
        if o.pairs is None:
            out.append(say("one_seed", dataset=o.dataset))
        elif o.pairs:
            out.append(say("overlap", dataset=o.dataset, pairs=", ".join(f"`{a}` and `{b}`" for a, b in o.pairs)))
        else:
            out.append(say("no_overlap", dataset=o.dataset))
    return " ".join(out)


def ranking_text(r: Ranking) -> str:
    (best, top1), n = r.order[0], len(r.order)
    if len(r.tied) > 1:
        text = say("tie_best", dataset=r.dataset, methods=" and ".join(f"`{m}`" for m in r.tied), top1=pct(top1))
    elif n > 1:
        second, second_top1 = r.order[1]
        text = say("best", dataset=r.dataset, best=best, top1=pct(top1), second=second, second_top1=pct(second_top1),
                   margin=pts(top1 - second_top1))
    else:
        text = say("only", dataset=r.dataset, best=best, top1=pct(top1))
    if r.amflow_rank is not None:
        against = "; ".join(comparison(c) for c in r.against)
        text += say("amflow_rank", variant=r.amflow_variant, top1=pct(dict(r.order)["amflow"]), rank=r.amflow_rank,
                    n=n, against=": " + against if against else "")
    if r.frame_top1 is not None:
        text += say("frame", top1=pct(r.frame_top1), above=r.above_frame, n=n - 1)
    return text


def frame_order_text(f: FrameOrder) -> str:
    most = say("frame_order_most", method=f.users[0], share=pct(f.both[f.users[0]])) if f.users else ""
    t = say("frame_order", dataset=f.dataset, users=len(f.users), n=len(f.both), most=most)
    if "frame" in f.both:
        t += say("frame_blind" if f.both["frame"] == 0 else "frame_not_blind", share=pct(f.both["frame"]))
    if "amflow" in f.both:
        others = ", ".join(f"`{m}` {pct(v)}" for m, v in f.both.items() if m not in ("amflow", "frame"))
        t += say("amflow_both", share=pct(f.both["amflow"]), against=f" (against {others})" if others else "")
    return t


def epochs90_text(e: Epochs90) -> str:
    t = say("epochs90", dataset=e.dataset, epochs=", ".join(f"`{m}` {v:.2f}" for m, v in e.epochs.items()),
            fewest=", ".join(f"`{m}`" for m in e.fewest))
    if e.verdict is not None:
        n = len(e.epochs) - 1
        t += say("epochs90_amflow", n=n, fewer=e.amflow_fewer, same=n - e.amflow_fewer - e.amflow_more,
                 more=e.amflow_more, meaning=TEMPLATES["epochs90_" + e.verdict.replace(" ", "_")])
    return t


def variant_paragraph(variants: list[VariantResult], cameras: dict[str, Optional[str]]) -> str:
    """``cameras``: dataset -> 'aligned' (moving camera), 'static' or None (unknown)."""
    out = []
    for v in variants:
        camera = cameras.get(v.dataset)
        t = say("variant", dataset=v.dataset, camera=CAMERAS.get(camera, CAMERAS[None]))
        c = v.aligned_vs_static
        if c is not None:
            name = "aligned_beats" if c.diff > 0 else "aligned_loses" if c.diff < 0 else "aligned_ties"
            if not c.clear:
                name += "_not_clear"
            t += say("variant_pair", aligned=pct(c.a_mean), static=pct(c.b_mean),
                     comparison=say(name, diff=pts(c.diff)))
            if camera == "aligned":
                # a gain within the seed spread does not show that compensation helps
                t += (TEMPLATES["moving_helps"] if c.diff > 0 and c.clear else
                      "" if c.diff > 0 else TEMPLATES["moving_does_not"])
            elif camera == "static":
                t += TEMPLATES["static_camera"]
        t += "."
        if v.best_vs_none is not None:
            better = f"the better variant, `{v.best_vs_none.a}`,"
            t += say("against_none", comparison=comparison(v.best_vs_none, better))
        out.append(t)
    return " ".join(out)


def axis_paragraph(axis: str, ranges: list[AxisRange]) -> str:
    out = []
    for r in ranges:
        if r.settings == 1:
            out.append(say("axis_one", dataset=r.dataset, axis=axis, best=r.best, top1=pct(r.best_top1)))
        else:
            out.append(say("axis", dataset=r.dataset, axis=axis, best=r.best, top1=pct(r.best_top1), worst=r.worst,
                           worst_top1=pct(r.worst_top1), spread=pts(r.best_top1 - r.worst_top1)))
    return " ".join(out)


def fair_claim_line(c: FairClaim) -> str:
    if c.setting == "footprint":
        claim = TEMPLATES["fair_footprint" if c.against == "tpa" else "fair_footprint_uniform"]
    elif c.setting in CONTROL_SCORES:
        claim = say("fair_control", scores=CONTROL_SCORES[c.setting])
    else:
        claim = say("fair_variant", setting=c.setting)
    figure = paired(c.paired)
    if c.share is not None:
        share, std, seeds = c.share
        figure += say("share", share=f"{share:.2f}", std="" if std is None else f" ± {std:.2f}", seeds=seeds)
    if c.probe is not None:
        figure += say("probe", accuracy=100 * c.probe)
    return say("fair", dataset=c.dataset, integration=c.integration, claim=claim, verdict=c.paired.verdict,
               figure=figure)
