"""Model cards: one Markdown file per model, generated from the metrics that ``make models`` writes, the seed spread
that ``make seeds`` writes, and a CPU latency sweep measured here. ``make cards`` refreshes
``model_repository/cards/``.

    python -m tools.reports.model_card --models build/models --spread build/seeds/seed_spread.json \
        --out model_repository/cards

Each card records the provenance of its figures (``tools.provenance``: code digest, data recipe digest, dependency
versions); ``tests/unit/test_model_card.py`` fails when the code digest no longer matches the training code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import onnxruntime as ort

from tools import provenance
from tools.build_repository import DEFAULT_PRECISION as CPU_PRECISION
from tools.build_repository import served_precision
from tools.gpu.build_engines import DEFAULT_PRECISION as GPU_PRECISION
from tools.precision_gate import TOLERANCES, Choice
from tools.quantize import feeds, latency_ms, session
from tools.reports.seed_spread import SPREAD
from tools.synth import make_dataset

BATCHES = (1, 8, 16, 32)
PURPOSE = {
    "anomaly": "Convolutional VAE (latent 128, Bernoulli decoder, full 256x256 resolution) trained on good dies "
    "only. HEATMAP is the squared reconstruction error averaged over 8x8 cells; SCORE is the worst "
    "window of 8, 32 or 64 pixels, the larger windows weighted to the cells' scale by the 99th "
    "percentiles of good validation dies. The daemon compares SCORE with the recipe x tool bands.",
    "classifier": "Multimodal defect classifier: a small hybrid ViT over 8x8 image patches, the MES process vector "
    "and operator-note tokens read through gated cross-attention (gates start at zero, so a missing "
    "modality contributes nothing); trained with focal loss, image/process contrastive alignment, "
    "an attention-entropy penalty and a process probe (dropped after training). Softmax over GOOD and "
    "15 defect classes, attention over patches.",
}
# Targets of the seed case studies (VAE: 004, multimodal classifier: 003).
TARGETS = {
    "auroc": "> 0.95",
    "auprc": "> 0.85",
    "auprc_at_production_prevalence": "> 0.85",
    "fnr_at_fpr_5pct": "< 0.005",
    "pixel_auroc": "> 0.90",
    "escape_rate": "< 0.01",
    "false_positive_rate": "< 0.15",
    "macro_f1": "> 0.71",
}
HEADLINE = {
    "anomaly": (
        "auroc",
        "auprc",
        "auprc_at_production_prevalence",
        "fnr_at_fpr_5pct",
        "pixel_auroc",
        "auroc_image_mean",
        "pass_band",
        "reject_band",
        "good_fpr_at_pass",
        "good_fpr_at_reject",
    ),
    "classifier": ("accuracy", "macro_f1", "escape_rate", "false_positive_rate"),
}


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _io(model_path: Path) -> list[tuple]:
    sess = session(model_path)
    return [
        (kind, n.name, n.type, n.shape)
        for kind, nodes in (("input", sess.get_inputs()), ("output", sess.get_outputs()))
        for n in nodes
    ]


def headline_rows(name: str, metrics: dict) -> list[tuple]:
    return [(k, metrics[k], TARGETS.get(k, "")) for k in HEADLINE[name] if k in metrics]


def comparison_rows(name: str, metrics: dict) -> tuple[tuple[str, ...], list[tuple]]:
    """anomaly: the PCA baseline per component count; classifier: modalities present vs masked, and the CNN."""
    if name == "anomaly":
        header = ("model", "AUROC", "AUPRC", "FNR at FPR 5%", "AUROC of the image-mean error")
        rows = [("VAE", metrics["auroc"], metrics["auprc"], metrics["fnr_at_fpr_5pct"], metrics["auroc_image_mean"])]
        rows += [
            (f"PCA, {k} components", b["auroc"], b["auprc"], b["fnr_at_fpr_5pct"], b["auroc_image_mean"])
            for k, b in metrics.get("pca_baseline", {}).items()
        ]
        return header, rows
    header = ("model, inputs", "accuracy", "macro-F1", "escape", "FPR", "DISCOLOR found", "cosmetic passed")
    runs = {f"multimodal, {k}": v for k, v in metrics.get("modalities", {}).items()}
    if "baseline_cnn" in metrics:
        runs["vision-only CNN baseline"] = metrics["baseline_cnn"]
    rows = [
        (
            label,
            r["accuracy"],
            r["macro_f1"],
            r["escape_rate"],
            r["false_positive_rate"],
            r["discolour"]["real_recall"],
            r["discolour"]["cosmetic_passed"],
        )
        for label, r in runs.items()
    ]
    return header, rows


def confusion_lines(metrics: dict) -> list[str]:
    cm = metrics.get("confusion_matrix")
    if not cm:
        return []
    classes = cm["classes"]
    rows = [(c, *counts) for c, counts in zip(classes, cm["rows_true_cols_pred"])]
    return ["## Confusion matrix (rows: truth, columns: prediction)", "", *_table(("", *classes), rows), ""]


def weaknesses(name: str, metrics: dict) -> list[str]:
    """Classes the model handles worst, read from its own held-out metrics."""
    if name == "anomaly":
        weak = {
            c: v["at_or_above_pass"]
            for c, v in metrics["per_class"].items()
            if c != "GOOD" and v["at_or_above_pass"] < 0.5
        }
        what = "share of defect dies at or above the pass band"
    else:
        weak = {c: r for c, r in metrics["per_class_recall"].items() if r < 0.95}
        what = "recall"
    return [f"- {c}: {what} {v}" for c, v in sorted(weak.items(), key=lambda kv: kv[1])] or ["- none flagged"]


def _evaluated(metrics: dict) -> list[str]:
    """The anomaly evaluation's population, when the metrics record it."""
    ev = metrics.get("evaluated")
    if not ev:
        return []
    return [
        f"Positives: {ev['positives']} dies showing a defect; negatives: {ev['negatives']} clean GOOD dies. "
        f"The {ev['left_out_discolour_look']} dies with the discolouration look are left out: in grey the tint is "
        "faint, and whether it is a defect depends on the process log, which is the classifier's job. "
        f"SCORE: {metrics.get('score', 'see the interface')}.",
        "",
    ]


def _comparison(name: str, metrics: dict) -> list[str]:
    header, rows = comparison_rows(name, metrics)
    if not rows:
        return []
    title = "Against the PCA baseline" if name == "anomaly" else "Modalities and the vision-only baseline"
    return [f"## {title}", "", *_table(header, rows), ""]


def precision_lines(name: str, precision: dict | None, served: dict[str, Choice]) -> list[str]:
    """Each precision form on the held-out split: figures, change against FP32, the gate's verdict; then what each
    repository variant serves by default (and why, when it falls back)."""
    if not precision or name not in precision.get("models", {}):
        return []
    gated = [limit.metric for limit in TOLERANCES[name]]
    rows = []
    for form, entry in precision["models"][name].items():
        change = entry.get("change_vs_fp32", {})
        shown = ", ".join(f"{k} {v}" for k, v in entry["metrics"].items() if not k.startswith(("good_", "defect_")))
        moved = ", ".join(f"{k} {change[k]:+.4g}" for k in gated if change.get(k) is not None) or "-"
        gate = entry.get("gate", {})
        verdict = "pass" if gate.get("passed") else "fail: " + "; ".join(gate.get("failures", []))
        rows.append((form, f"{entry['bytes'] / 1e6:.1f} MB", shown, moved, verdict))
    limits = [(limit.metric, f"{'+' if limit.worse == 'rise' else '-'}{limit.tolerance:g}", limit.why)
              for limit in TOLERANCES[name]]  # fmt: skip
    data = precision["data"]
    lines = ["## Precision forms (ONNX Runtime, CPU) and the precision gate", "",
             f"Held-out split: {data['heldout']} mixed dies"
             + (f" and {data['heldout_good']} GOOD dies" if "heldout_good" in data else "") + ".", "",
             *_table(("form", "size", "metrics", "change vs fp32", "gate"), rows), "",
             "Tolerances against FP32 (`tools/precision_gate.py`); a form outside any of them is not installed:", "",
             *_table(("figure", "allowed change", "why"), limits), ""]  # fmt: skip
    for variant, choice in served.items():
        lines.append(f"- {variant}: asks {choice.requested}, serves **{choice.served}**"
                     + (f" (fallback: {choice.fallback})" if choice.fallback else ""))  # fmt: skip
    return [*lines, ""] if served else lines


def _cell(summary: dict) -> str:
    return f"{summary['mean']:.4g} ± {summary['sd']:.2g} ({summary['min']:.4g}-{summary['max']:.4g})"


def spread_lines(name: str, spread: dict | None) -> list[str]:
    """Each headline figure over the training seeds, per precision: mean ± sd (min-max)."""
    if not spread or name not in spread.get("models", {}):
        return []
    forms = spread["models"][name]
    figures = list(forms["fp32"]["figures"])
    rows = [(figure, *(_cell(forms[p]["figures"][figure]) if figure in forms[p]["figures"] else "-" for p in forms),
             TARGETS.get(figure, "")) for figure in figures]  # fmt: skip
    rows.append(("passed the precision gate", *(forms[p]["gate_passed"] for p in forms), ""))
    return ["## Seed spread", "",
            f"The same recipe trained with seeds {', '.join(map(str, spread['seeds']))} ({spread['budget']} budget), "
            "each measured on the same held-out split in ONNX Runtime: mean ± standard deviation (min-max). A model "
            "trained on another machine lands inside this spread rather than on the figures above: the CPU's BLAS "
            "and oneDNN kernels round differently and training follows another path.", "",
            *_table(("figure", *forms, "target"), rows), ""]  # fmt: skip


def provenance_lines(origin: dict | None) -> list[str]:
    if not origin:
        return []
    deps = ", ".join(f"{k} {v}" for k, v in origin["dependencies"].items())
    return [
        "## Provenance",
        "",
        *_table(
            ("", "value"),
            [
                ("code digest", f"`{origin['code_digest']}`"),
                ("data recipe digest", f"`{origin['data_recipe_digest']}`"),
                ("budget, seed", f"{origin['budget']}, {origin['seed']}"),
                ("dependencies", deps),
                ("trained on", origin["host"]),
            ],
        ),
        "",
        f"The code digest covers {len(origin['sources'])} files (`python -m tools.provenance sources`).",
        "",
    ]


def render_card(
    name: str,
    metrics: dict,
    precision: dict | None,
    io_rows: list[tuple],
    latency: dict[int, float],
    host: str,
    served: dict[str, Choice] | None = None,
    spread: dict | None = None,
    origin: dict | None = None,
) -> str:
    """The card's Markdown text (pure)."""
    data = metrics["data"]
    lines = [
        f"# Model card: `{name}`",
        "",
        "Generated by `make cards` (`python -m tools.reports.model_card`); do not edit by hand.",
        "",
        "## What it does",
        "",
        PURPOSE[name],
        "",
        "## Interface (Triton, ONNX opset 17, dynamic batch)",
        "",
        *_table(("", "name", "type", "shape"), io_rows),
        "",
        "## Data",
        "",
        "Synthetic dies from the seeded generator (`tools/synth.py`): nothing is downloaded.",
        "",
        *_table(("split", "value"), [(k, v) for k, v in data.items()]),
        "",
        f"Training budget: `{json.dumps(metrics.get('budget', {}))}`; training took "
        f"{metrics['seconds']['total']} s on the build host.",
        "",
        "## Held-out metrics (another seed, shifted tool optics)",
        "",
        *_evaluated(metrics),
        *_table(("metric", "value", "case-study target"), headline_rows(name, metrics)),
        "",
        *_comparison(name, metrics),
        *confusion_lines(metrics),
        "## Weakest classes",
        "",
        *weaknesses(name, metrics),
        "",
    ]
    lines += precision_lines(name, precision, served or {})
    lines += spread_lines(name, spread)
    lines += provenance_lines(origin)
    lines += [
        f"## Latency per batch size (FP32, ONNX Runtime CPU, {host})",
        "",
        *_table(("batch", "ms per batch", "ms per die"), [(b, ms, round(ms / b, 2)) for b, ms in latency.items()]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.reports.model_card", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"))
    parser.add_argument("--out", type=Path, default=Path("model_repository/cards"))
    parser.add_argument(
        "--spread", type=Path, default=Path("build/seeds") / SPREAD, help="tools.reports.seed_spread output"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    precision_path = args.models / "precision_metrics.json"
    precision = json.loads(precision_path.read_text()) if precision_path.exists() else None
    spread = json.loads(args.spread.read_text()) if args.spread.is_file() else None
    origin = provenance.read(args.models)
    dies = make_dataset(seed=4001, n=max(BATCHES))
    host = f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} ORT threads, onnxruntime {ort.__version__}"
    for name in ("anomaly", "classifier"):
        path = args.models / f"{name}.onnx"
        metrics = json.loads((args.models / f"{name}_metrics.json").read_text())
        latency = {b: latency_ms(path, feeds(name, dies), b, runs=5, threads=args.threads) for b in BATCHES}
        served = {
            variant: served_precision(name, args.models, asked[name])
            for variant, asked in (("CPU repository", CPU_PRECISION), ("GPU engines", GPU_PRECISION))
        }
        card = args.out / f"{name}.md"
        card.write_text(render_card(name, metrics, precision, _io(path), latency, host, served, spread, origin))
        print(f"wrote {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
