"""Copy the study's small outputs from runs/study/ (ignored) into docs/study/, and write what it cost.

    python docs/study/collect.py [--runs runs/study] [--docs docs/study]

Per study (``demo``, ``scratch``): the reports (``compare.md``, ``compare.json`` with every curve and
command, ``compare.png``, ``forest.png``, ``runs.csv``) of each stage (``tune``/``eval``, or the single
comparison) and the lr ``selection.md``/``.json``; no checkpoints, snapshots or logs. ``cost.json`` and
``cost.md``: runs, kimg, the summed run wall time and the span from the first start to the last finish
(from each run's ``run.json``). Study 2: the landscape summaries of the evaluation runs and
``landscape.md``, the landscape measures per arm and paired against logistic (:func:`measure_table`); for a
scenario with ADA, ``ada.md``, how far each evaluation run's augmentation probability p rose and how often D's
overfitting heuristic r_t was above ADA's target (:func:`ada_values`, from each run's ``metrics.csv``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import yaml

from rootedgan.compare.bootstrap import bootstrap_ci, paired_difference
from rootedgan.compare.curves import read_metrics_csv
from rootedgan.compare.report import md_table
from rootedgan.errors import UserError
from rootedgan.runs import run_log_dir

REPORT_FILES = ("compare.md", "compare.json", "compare.png", "forest.png", "runs.csv")
TOP_FILES = ("selection.md", "selection.json")
# landscape summary key -> column heading (rootedgan.tools.landscape.summarize)
LANDSCAPE_MEASURES = {
    "feasible_fraction": "feasible share of the (alpha, beta) grid",
    "holds_alpha1_beta0": "(1, 0) holds",
    "pl_mu_min": "PL constant, min",
    "cos_median": "aiming cosine, median",
}
# ada_values key -> column heading
ADA_MEASURES = {
    "p_peak": "peak augmentation probability p",
    "rt_above_target": "share of adjustments with r_t above the target",
}


def _stamp(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def cost(study: Path) -> dict:
    records = [json.loads(p.read_text()) for p in sorted(study.glob("**/run.json"))]
    if not records:
        return {}
    ends = [_stamp(r["finished"]) for r in records]
    starts = [e - float(r["wall_s"]) for e, r in zip(ends, records, strict=True)]
    kimg = sorted(
        {a for r in records for i, a in enumerate(r["args"][:-1]) if r["args"][i - 1] == "--model.total_kimg"}
    )
    return {
        "runs": len(records),
        "kimg_per_run": kimg,
        "run_wall_s_total": round(sum(float(r["wall_s"]) for r in records), 1),
        "run_wall_s_mean": round(sum(float(r["wall_s"]) for r in records) / len(records), 1),
        "run_wall_s_min": round(min(float(r["wall_s"]) for r in records), 1),
        "run_wall_s_max": round(max(float(r["wall_s"]) for r in records), 1),
        "first_start": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(min(starts))),
        "last_finish": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(max(ends))),
        "span_h": round((max(ends) - min(starts)) / 3600, 2),
        "threads_per_run": sorted({r.get("threads") for r in records}, key=str),
    }


def landscape_values(study: Path) -> dict[str, dict[str, dict[int, float]]]:
    """``{arm: {measure: {seed: value}}}`` from ``<study>/landscape/<arm>-seed<N>/landscape.json`` (one run
    per file); a measure the probe could not compute (``None``) is left out for that seed."""
    values: dict[str, dict[str, dict[int, float]]] = {}
    for probe in sorted(study.glob("landscape/*-seed*/landscape.json")):
        arm, _, seed = probe.parent.name.rpartition("-seed")
        (run,) = json.loads(probe.read_text())["runs"].values()
        for key in LANDSCAPE_MEASURES:
            if run["summary"].get(key) is not None:
                values.setdefault(arm, {}).setdefault(key, {})[int(seed)] = float(run["summary"][key])
    return values


def ada_values(study: Path) -> dict[str, dict[str, dict[int, float]]]:
    """``{arm: {measure: {seed: value}}}`` of the evaluation runs listed in ``<study>/eval/compare.json``,
    from the ``Progress/augment_p`` and ``Progress/ada_rt`` curves of each run's ``metrics.csv`` (its log
    folder as :func:`rootedgan.runs.run_log_dir` finds it) and the ``model.augment.ada_target`` of the
    ``config.yaml`` beside it; runs without logs or without ADA (no p logged) are left out."""
    report = study / "eval" / "compare.json"
    values: dict[str, dict[str, dict[int, float]]] = {}
    for run in json.loads(report.read_text())["runs"] if report.is_file() else []:
        try:
            log_dir = run_log_dir(run["run_dir"])
        except UserError:
            continue
        curves = read_metrics_csv(log_dir / "metrics.csv") if (log_dir / "metrics.csv").is_file() else {}
        if "Progress/augment_p" not in curves or "Progress/ada_rt" not in curves:
            continue
        config = yaml.safe_load((log_dir / "config.yaml").read_text())
        target = float(config["model"]["augment"]["ada_target"])
        arm = values.setdefault(run["arm"], {})
        arm.setdefault("p_peak", {})[int(run["seed"])] = float(curves["Progress/augment_p"].value.max())
        arm.setdefault("rt_above_target", {})[int(run["seed"])] = float(
            (curves["Progress/ada_rt"].value > target).mean()
        )
    return values


def measure_table(
    values: dict[str, dict[str, dict[int, float]]], headings: dict[str, str], baseline: str = "logistic"
) -> list[str]:
    """Markdown: per arm the mean [95 % bootstrap CI] over its seeds of each measure in ``headings`` (key ->
    column heading), then per other arm the paired difference arm - baseline (mean [CI], exact sign-flip p,
    seeds where larger)."""

    def cell(stats: dict) -> str:
        bounds = "" if math.isnan(stats["lo"]) else f" [{stats['lo']:.3g}, {stats['hi']:.3g}]"
        return f"{stats['mean']:.3g}{bounds}"

    heads = list(headings.values())
    rows = []
    for arm, measures in values.items():
        cells = [cell(bootstrap_ci(list(measures[k].values()))) if k in measures else "–" for k in headings]
        rows.append([f"`{arm}`", str(max(len(v) for v in measures.values())), *cells])
    lines = md_table([("arm", "---"), ("runs", "---:"), *((h, "---:") for h in heads)], rows)
    if baseline not in values:
        return lines
    rows = []
    for arm, measures in values.items():
        if arm == baseline:
            continue
        cells = []
        for key in headings:
            d = paired_difference(measures.get(key, {}), values[baseline].get(key, {}), lower_is_better=False)
            cells.append(
                f"{cell(d)}, p = {d['p_sign_flip']:.3g}, larger on {d['better']}/{d['n']}" if d["n"] else "–"
            )
        rows.append([f"`{arm}`", *cells])
    return lines + md_table([(f"arm - {baseline}", "---"), *((h, "---:") for h in heads)], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/study")
    parser.add_argument("--docs", default="docs/study")
    args = parser.parse_args(argv)
    runs, docs = Path(args.runs), Path(args.docs)
    costs = {}
    for study in sorted(p for p in runs.iterdir() if p.is_dir()):
        target = docs / study.name
        stages = [s for s in ("tune", "eval") if (study / s / "compare.json").is_file()] or ["."]
        for stage in stages:
            for name in REPORT_FILES:
                src = study / stage / name
                if src.is_file():
                    dst = target / stage / name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
        for probe in sorted(study.glob("landscape/*/landscape.json")):  # study 2: the landscape summaries
            dst = target / "landscape" / f"{probe.parent.name}.json"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(probe, dst)
        if values := landscape_values(study):
            target.mkdir(parents=True, exist_ok=True)
            (target / "landscape.md").write_text("\n".join(measure_table(values, LANDSCAPE_MEASURES)))
        if values := ada_values(study):
            (target / "ada.md").write_text("\n".join(measure_table(values, ADA_MEASURES)))
        for name in TOP_FILES:
            if (study / name).is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(study / name, target / name)
        costs[study.name] = cost(study)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "cost.json").write_text(json.dumps(costs, indent=1) + "\n")
    lines = ["| study | runs | kimg per run | summed run time | span (first start to last finish) |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, c in costs.items():
        if c:
            lines.append(
                f"| {name} | {c['runs']} | {', '.join(c['kimg_per_run'])} "
                f"| {c['run_wall_s_total'] / 3600:.2f} h (mean {c['run_wall_s_mean'] / 60:.1f} min per run) "
                f"| {c['span_h']:.2f} h |"
            )
    (docs / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
