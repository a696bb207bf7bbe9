"""The report's sections: for one run its results, Dice per round, box plots, overlays, timeline and
configuration; for a reproduction its tables, its figures and every cell's run."""

from __future__ import annotations

import json

from pedseg_core.report import figures
from pedseg_core.report.html import details, heading, image, paragraph, pre, table
from pedseg_core.report.overlays import find_overlays
from pedseg_core.report.reproduction import ReproductionFiles
from pedseg_core.report.run_files import RunFiles
from pedseg_core.train.metrics_line import RUN_ENDED, MetricsLine, SiteEvent

STATUS_KEYS = {"status": "Flower status", "status-details": "Flower status details", "starting-at": "started",
               "finished-at": "finished", "elapsed": "elapsed (s)"}  # logs/run-status.json


def _summary(run: RunFiles) -> str:
    results, status = run.results or {}, run.status or {}
    rows = [("run folder", str(run.path)), ("kind", run.kind), ("scheme", results.get("scheme")),
            ("strategy", results.get("strategy")),
            ("rounds" if run.kind == "federated" else "epochs", results.get("rounds")),
            ("sites", ", ".join(run.sites) or None), ("mean Dice", results.get("mean_dice"))]
    rows += [(label, status.get(key)) for key, label in STATUS_KEYS.items()]
    body = table(None, [(k, v) for k, v in rows if v is not None])
    if run.results is None:
        body += paragraph("No results.json: the run has not finished (or stopped early); what it logged so far is "
                          "shown.", note=True)
    return body


def _results(run: RunFiles, level: int) -> str:
    sites = (run.results or {}).get("sites", {})
    if not sites:
        return ""
    rows = [(site, r.get("joint"), r.get("cases"), bone, value, (r.get("hd95") or {}).get(bone),
             (r.get("assd") or {}).get(bone)) for site, r in sites.items() for bone, value in r.get("dice", {}).items()]
    means = [(site, r.get("mean_dice")) for site, r in sites.items()]
    return (heading("Final results per site and bone", level)
            + table(("site", "joint", "cases", "bone", "Dice", "HD95 (mm)", "ASSD (mm)"), rows)
            + table(("site", "mean Dice"), means))


def _curves(run: RunFiles, level: int) -> str:
    if run.kind == "centralized":
        png = figures.loss_per_epoch(run.epochs)
        return (heading("Training per epoch", level)
                + paragraph("A centralized run evaluates once, after its last epoch: its log (metrics.jsonl) holds "
                            "the training loss per epoch, not a Dice per epoch.", note=True)
                + (image(png, "training loss per epoch") if png else paragraph("No epoch was logged.", note=True)))
    dice = figures.dice_per_round(run.rounds)
    body = heading("Dice per round, per site", level)
    if dice:
        evaluated = [str(r.round) for r in run.rounds if r.site_evaluations]
        body += (paragraph(f"Each site's personalized model on its test cases, after rounds {', '.join(evaluated)} "
                           f"(evaluation.sites in metrics.jsonl).") + image(dice, "Dice per round per site"))
    else:
        body += paragraph("No round of metrics.jsonl carries an evaluation.", note=True)
    training = figures.training_per_round(run.rounds)
    return body + (image(training, "training loss and epsilon per round") if training else "")


def _boxes(run: RunFiles, level: int) -> str:
    sites = (run.results or {}).get("sites", {})
    png = figures.bone_boxes(sites)
    if png is None:
        return ""
    without = sorted(s for s, r in sites.items() if not r.get("per_case"))
    body = heading("Per-bone Dice of the test cases", level) + image(png, "per-bone box plots of per-case Dice")
    if without:
        body += paragraph(f"No per-case metrics in results.json for {', '.join(without)} (the run did not ask for "
                          f"them or the sites' policies kept them): their per-bone means are shown instead.", note=True)
    return body


def _overlays(run: RunFiles, level: int, per_site: int) -> str:
    found, notes = find_overlays(run, per_site)
    body = heading("Predictions on test slices", level)
    if found and run.data_source is not None:
        body += paragraph(f"Images found through the data paths in {run.data_source}.")
    by_site: dict[str, list] = {}
    for item in found:
        by_site.setdefault(item.site, []).append(item)
    for site, items in by_site.items():
        body += image(figures.overlays(items), f"predictions of {site} on test slices")
    return body + "".join(paragraph(n, note=True) for n in notes)


def _events(events: list[SiteEvent]) -> str:
    return "; ".join(f"{e.site}: {e.reason}" for e in events)


def _round_row(record: MetricsLine) -> tuple:
    extra = [f"{site} refused {', '.join(map(str, refused))}" for site, refused in record.policy_refusals.items()]
    if record.secure_aggregation:
        extra.append("SecAgg+ " + json.dumps(record.secure_aggregation))
    epsilon = ", ".join(f"{s} {e:.2f}" for s, e in sorted(record.epsilon.items()))
    evaluation = record.evaluation.mean_dice if record.evaluation else None
    return (record.round, record.round_time_s, ", ".join(sorted(record.sites)), _events(record.missing),
            _events(record.rejected), _events(record.errors), epsilon, evaluation, "; ".join(extra))


def _timeline(run: RunFiles, level: int) -> str:
    if run.kind != "federated":
        return ""
    body = heading("Federation timeline", level)
    if not run.rounds:
        return body + paragraph("metrics.jsonl holds no round yet.", note=True)
    total = sum(r.round_time_s or 0.0 for r in run.rounds)
    dropped = sorted({e.site for r in run.rounds for e in r.missing + r.errors})
    rejected = sorted({e.site for r in run.rounds for e in r.rejected})
    text = (f"{len(run.rounds)} rounds logged, {total:.0f} s in all; "
            + (f"sites missing or failing in some round: {', '.join(dropped)}" if dropped
               else "every site answered every round"))
    text += f"; updates rejected from: {', '.join(rejected)}." if rejected else "; no update was rejected."
    spent = {s: e for r in run.rounds for s, e in r.epsilon.items()}  # the last epsilon each DP site reported
    if spent:
        text += " Differential privacy: epsilon spent " + ", ".join(f"{s} {e:.2f}" for s, e in sorted(spent.items()))
        text += "."
    body += paragraph(text)
    if run.prior_rounds:
        body += paragraph(f"Before these rounds, stage 1 of the full scheme trained the shape prior in "
                          f"{len(run.prior_rounds)} FedAvg rounds (stage: prior in metrics.jsonl).")
    for event in run.events:
        body += paragraph(", ".join(f"{k}: {v}" for k, v in event.values().items()), note=event.event == RUN_ENDED)
    png = figures.timeline(run.rounds, run.sites)
    body += image(png, "federation timeline") if png else ""
    return body + table(("round", "time (s)", "trained", "missing", "rejected updates", "errors", "epsilon",
                         "mean Dice", "other"), map(_round_row, run.rounds))


def _configuration(run: RunFiles, level: int) -> str:
    body = heading("Resolved configuration (config.yaml)", level) + pre(run.config_text)
    if run.launch is not None:
        body += details("federation.json: what `pedseg federate --local` was asked", pre(json.dumps(run.launch,
                                                                                                      indent=2)))
    return body


def run_sections(run: RunFiles, level: int = 2, overlays_per_site: int = 3) -> str:
    """Every section of the report of one run, headings from `level` down."""
    return "\n".join([_summary(run), _results(run, level), _curves(run, level), _boxes(run, level),
                      _overlays(run, level, overlays_per_site), _timeline(run, level), _configuration(run, level)])


def _dice_table(results: dict) -> str:
    """Cells x bones: Dice mean ± std over the test cases, and each cell's mean Dice."""
    summary = results.get("summary", [])
    bones = list(dict.fromkeys((e["joint"], e["bone"]) for e in summary))
    by_cell: dict[str, dict] = {}
    for e in summary:
        mean, std = e.get("dice_mean"), e.get("dice_std")
        by_cell.setdefault(e["cell"], {})[(e["joint"], e["bone"])] = \
            "–" if mean is None else f"{mean:.3f} ± {std or 0.0:.3f}"
    rows = [(cell, *(by_cell.get(cell, {}).get(b, "–") for b in bones), mean)
            for cell, mean in results.get("mean_dice", {}).items()]
    return table(("cell", *(f"{j}/{b}" for j, b in bones), "mean Dice"), rows)


def reproduction_sections(repro: ReproductionFiles) -> str:
    """The reproduction's summary tables and figures, then one collapsible section per cell."""
    body = paragraph(f"Reproduction folder {repro.path}: preset {repro.settings.get('preset')}, "
                     f"{repro.settings.get('folds')} fold(s), {len(repro.settings.get('cells', []))} cells.")
    results = repro.results
    if results is None:
        body += paragraph("No results.json: the reproduction has not finished; its finished cells are shown.",
                          note=True)
    else:
        ratios = {r["cell"]: r.get("ratio") for r in results.get("federated_over_centralized", [])}
        body += (heading("Cells") + table(("cell", "mean Dice", "time (s)", "federated / centralized"),
                                          [(c, m, repro.seconds.get(c), ratios.get(c))
                                           for c, m in results.get("mean_dice", {}).items()])
                 + heading("Dice per bone, mean ± std over the test cases") + _dice_table(results)
                 + heading("Claims") + (table(("claim", "value", "met"),
                                              [(c["claim"], c.get("value"), "yes" if c.get("met") else "no")
                                               for c in results["acceptance"]]) if results.get("acceptance")
                                        else paragraph("No claim applies to the cells that were run.", note=True))
                 + heading("Paired Wilcoxon signed-rank tests")
                 + (table(("reference", "other", "n", "mean Dice difference", "p-value"),
                          [(t.get("reference"), t.get("other"), t.get("n"), t.get("mean_difference"), t.get("p_value"))
                           for t in results["wilcoxon"]], digits=4) if results.get("wilcoxon")
                    else paragraph("No pair of the cells that were run is tested.", note=True)))
    for name, png in repro.figures.items():
        body += heading(name, 3) + image(png, name)
    body += heading("Cells one by one") + "".join(paragraph(n, note=True) for n in repro.notes)
    for label, run in repro.cells.items():
        mean = (run.results or {}).get("mean_dice")
        title = f"{label}: mean Dice " + ("–" if mean is None else f"{mean:.3f}")
        body += details(title, run_sections(run, level=3, overlays_per_site=1))
    return body + heading("Settings (reproduce.json)") + pre(json.dumps(repro.settings, indent=2))
