"""The model card of a version trained on a fab's data: what it was trained on, how it was trained, every figure
measured on the fab's ``test`` dies (overall, per tool, per recipe, without the process log), the forms and
whether they passed the precision gate, and the pictures (pure: metrics in, Markdown out)."""

from __future__ import annotations

from typing import Any

from tools.fab.evaluate import HEADLINE, targets

PICTURES = {"confusion.png": "Confusion matrix on test", "recall.png": "Per-class recall, with and without the log",
            "worst_errors.png": "The errors the classifier was surest about"}  # fmt: skip


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _cell(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.4f} ± {summary['sd']:.3f} ({summary['min']:.4f}-{summary['max']:.4f})"


def _spread(spread: dict[str, Any] | None, classes: list[str]) -> list[str]:
    """Each gated figure of each form, and each class's FP32 recall, over the seeds: mean ± sd (min-max)."""
    if not spread:
        return []
    out = ["## Seed spread", "",
           f"The same data and budget (`{spread['budget']}`) trained with seeds "
           f"{', '.join(map(str, spread['seeds']))}, "
           "each measured on the same test dies: mean ± standard deviation (min-max). Only the first seed is "
           "served; a retrain of this data lands inside this spread, not on the figures above.", ""]  # fmt: skip
    rows = []
    for name, forms in spread["models"].items():
        for figure in forms["fp32"]["figures"]:
            rows.append([name, figure, *(_cell(forms[p]["figures"][figure]) if figure in forms[p]["figures"]
                                         else "n/a" for p in forms)])  # fmt: skip
        rows.append([name, "passed the precision gate", *(forms[p]["gate_passed"] for p in forms)])
    out += _table(["model", "figure", *next(iter(spread["models"].values()))], rows)
    recall = spread["per_class_recall"]
    out += _table(["class", "recall (FP32)"], [[c, _cell(recall[c])] for c in classes if c in recall])
    return out


def render(m: dict[str, Any]) -> str:
    data, cls, anomaly = m["data"], m["classifier"]["test"], m["anomaly"]["test"]
    out = [f"# Model card: version {m['version']}, trained on `{data['name']}`", ""]
    split = "given" if data["split_given"] else "made by wafer"
    out += [f"Data digest `{data['digest'][:16]}`; {data['dies']} dies; classes {', '.join(data['classes'])}; "
            f"{len(data['parameters'])} process parameters; tools {', '.join(data['tools'])}; recipes "
            f"{', '.join(data['recipes'])}; split {split}.", ""]  # fmt: skip
    out += ["## Data", ""]
    out += _table(["class", *data["splits"]], [[c, *(data["counts"][s].get(c, 0) for s in data["splits"])]
                                               for c in data["classes"]])  # fmt: skip
    if data["warnings"]:
        out += ["Warnings from the data check:", "", *(f"- {w}" for w in data["warnings"]), ""]
    out += ["## Training", ""]
    budget = m["budget"]
    out += [f"Budget `{budget['name']}` (seed {m['seed']}): anomaly VAE up to {budget['vae_epochs']} epochs, best at "
            f"epoch {m['anomaly']['training']['best_epoch']}; classifier up to {budget['cls_epochs']} epochs, best "
            f"at epoch {m['classifier']['training']['best_epoch']} (val class-balanced NLL "
            f"{m['classifier']['training']['val_balanced_nll']:.4f}, macro-F1 "
            f"{m['classifier']['training']['val_macro_f1']:.4f}); early stopping after {budget['patience']} epochs "
            f"without a better validation score. {m['seconds']['total']:.0f} s in all on "
            f"{m['threads']} CPU threads.", ""]  # fmt: skip
    out += ["## Targets on test", ""]
    out += _table(["target", "measured", "met"], [[w, v, "yes" if ok else "**no**"] for w, v, ok in
                                                  targets(cls, anomaly)])  # fmt: skip
    out += ["## Classifier on test", ""]
    rows = [["all dies", cls["support"] and sum(cls["support"].values()), *(_fmt(cls[k]) for k in HEADLINE)]]
    for kind, groups in cls["per"].items():
        rows += [[f"{kind} {name}", g["n"], *(_fmt(g[k]) for k in HEADLINE)] for name, g in groups.items()]
    masked = cls["without_process_log"]
    rows.append(["process log masked", masked["n"], *(_fmt(masked[k]) for k in HEADLINE)])
    out += _table(["dies", "n", *HEADLINE], rows)
    taken = cls["good_called_with_and_without_log"]
    out += _table(["class", "support", "recall", "precision", "recall without the log",
                   "GOOD dies called it: with / without the log"],
                  [[c, cls["support"][c], _fmt(cls["per_class_recall"].get(c)), _fmt(cls["per_class_precision"].get(c)),
                    _fmt(masked["per_class_recall"].get(c)), "/".join(map(str, taken[c])) if c in taken else ""]
                   for c in data["classes"]])  # fmt: skip
    dependent = cls["log_dependent_classes"]
    told = (
        "Told apart only with the process log (without it, recall falls by 0.3 or more, or GOOD dies called "
        "the class grow by 0.3 of its support or more): "
    )
    out += [told + ", ".join(dependent) if dependent else "No class depends on the process log to be recognised.", ""]
    out += ["## Anomaly model on test", ""]
    out += [f"AUROC (defect vs GOOD) {_fmt(anomaly['auroc'])} over the visual defects"
            + (f" (leaving out {', '.join(anomaly['auroc_leaves_out'])})" if anomaly["auroc_leaves_out"] else "")
            + f"; {_fmt(anomaly['auroc_all_defects'])} over every defect. Bands (set on val GOOD dies): PASS under "
            f"{anomaly['bands']['pass_band']:.4g}, REJECT from {anomaly['bands']['reject_band']:.4g}.", ""]  # fmt: skip
    out += _table(["class", "at or above PASS band"], [[c, _fmt(v)] for c, v in
                                                       anomaly["per_class_at_or_above_pass"].items()])  # fmt: skip
    out += ["## Serving forms (ONNX Runtime on test, gated against FP32)", ""]
    rows = []
    for name, forms in m["precision"]["models"].items():
        for form, entry in forms.items():
            verdict = "pass" if entry["gate"]["passed"] else "fail: " + "; ".join(entry["gate"]["failures"])
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in entry["metrics"].items())
            rows.append([name, form, f"{entry['bytes'] / 1e6:.1f} MB", shown, verdict])
    out += _table(["model", "form", "size", "figures", "gate"], rows)
    out += [f"Served: {'; '.join(m['served'].values())}.", ""]
    out += _spread(m.get("seed_spread"), data["classes"])
    out += ["## Pictures", "", *(f"![{title}]({name})" for name, title in PICTURES.items()), ""]
    return "\n".join(out)
