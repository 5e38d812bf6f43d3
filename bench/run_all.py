"""Run every benchmark, write ``bench/results/<name>-<device>.json`` and render the README's tables.

    python bench/run_all.py [--device cpu|cuda] [--quick] [--only ops,train,fid,augment,orthogonal]
                            [--render-only] [--results bench/results] [--readme README.md]

Each benchmark (``bench/<name>.py``) runs in its own process with ``--device`` passed through (for
``--device cpu`` the GPU is also hidden with ``CUDA_VISIBLE_DEVICES=``, so ``ops.py`` times the CPU
reference) and writes ``<name>-cpu.json`` or ``<name>-cuda.json``: a GPU run never overwrites the CPU
numbers. ``--quick`` runs a short smoke version of each (numbers not for reporting). Benchmarks added
later (``augment``, ``orthogonal``) run when their script exists; their flags are read from ``--help``.

Then the README is updated between marker comments, one pair per benchmark::

    <!-- bench:train:start -->
    (generated: a machine line and a table per device)
    <!-- bench:train:end -->

A block is re-rendered only when results for it exist (``<name>-<device>.json``, or a legacy
``<name>.json`` filed under the device it ran on); otherwise it is left as it is. ``--render-only``
re-renders from the existing JSON files without running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
DEVICES = ("cpu", "cuda")


class MarkerError(ValueError):
    """The README lacks a benchmark's marker pair (or has it twice, or out of order)."""


@dataclass(frozen=True)
class Bench:
    """A benchmark script and how to call it.

    ``quick``: ``(flag, value or None)`` pairs for ``--quick``. ``probe``: read the script's ``--help`` and
    pass ``--device``, ``--out``, ``--quick`` and the ``quick`` flags only where the script has them (for
    scripts maintained elsewhere); otherwise ``--out`` always and ``--device`` when ``device_flag``.
    """

    name: str
    quick: tuple[tuple[str, str | None], ...] = ()
    device_flag: bool = True
    probe: bool = False

    @property
    def script(self) -> Path:
        return BENCH / f"{self.name}.py"


BENCHES = {
    "ops": Bench("ops", (("--iters", "5"), ("--warmup", "2"), ("--dtypes", "float32")), device_flag=False),
    "train": Bench("train", (("--steps", "4"), ("--warmup", "1"))),
    "fid": Bench("fid", (("--num-gen", "64"), ("--repeats", "1"))),
    "augment": Bench("augment", (("--quick", None), ("--repeats", "1"), ("--steps", "4")), probe=True),
    "orthogonal": Bench(
        "orthogonal", (("--quick", None), ("--repeats", "1"), ("--steps", "4"), ("--warmup", "1")), probe=True
    ),
}


# -- running ----------------------------------------------------------------------------------------


def result_path(results: Path, name: str, device: str) -> Path:
    return results / f"{name}-{device}.json"


def _help_flags(script: Path) -> set[str]:
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO)
    return set(re.findall(r"--[a-z][a-z0-9-]*", proc.stdout))


def bench_command(bench: Bench, device: str, quick: bool, out: Path) -> tuple[list[str], bool]:
    """``(argv, writes_to_out)`` for one benchmark run."""
    flags = _help_flags(bench.script) if bench.probe else None
    device_flag = "--device" in flags if flags is not None else bench.device_flag
    out_flag = "--out" in flags if flags is not None else True
    argv = [sys.executable, str(bench.script)]
    if device_flag:
        argv += ["--device", device]
    if out_flag:
        argv += ["--out", str(out)]
    if quick:
        for flag, value in bench.quick:
            if flags is None or flag in flags:
                argv += [flag] if value is None else [flag, value]
    return argv, out_flag


def run_bench(bench: Bench, device: str, quick: bool, results: Path) -> dict[str, Any]:
    """Run one benchmark in a subprocess (output shown); returns what happened."""
    out = result_path(results, bench.name, device)
    argv, writes_out = bench_command(bench, device, quick, out)
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU numbers even on a GPU machine
    print(f"\n=== {bench.name} ({device}{', quick' if quick else ''}): {' '.join(argv[1:])}", flush=True)
    start = time.time()
    proc = subprocess.run(argv, cwd=REPO, env=env)
    seconds = time.time() - start
    if not writes_out:  # the script wrote its own default file: file a copy under the device
        default = results / f"{bench.name}.json"
        if default.exists() and default.stat().st_mtime >= start:
            _write_text(out, default.read_text())
    ok = proc.returncode == 0 and out.exists() and out.stat().st_mtime >= start
    return {"name": bench.name, "returncode": proc.returncode, "seconds": seconds, "ok": ok, "out": str(out)}


# -- rendering --------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if abs(value) >= 10**digits:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return str(value).replace("|", "\\|")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right_from: int = 1) -> str:
    """A markdown table; columns from ``right_from`` on are right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict[str, Any] | None) -> str:
    """One line naming the machine a result comes from (``bench.common.machine_info``)."""
    if not info:
        return "Machine: not recorded."
    cores = info.get("cpu_cores_usable") or info.get("cpu_cores")
    parts = [f"{info.get('cpu', 'unknown CPU')} ({cores} cores)", f"torch {info.get('torch', '?')}"]
    if info.get("gpu"):
        parts.insert(0, f"{info['gpu']} (CUDA {info.get('cuda')}, {info.get('gpu_memory_gib', '?')} GiB)")
    else:
        parts.append("no GPU")
    when = str(info.get("time", ""))[:10]
    return f"Measured {when} on " + ", ".join(parts) + "."


def render_ops(data: dict[str, Any]) -> str:
    rows = data.get("results", [])
    cuda = any("cuda_fwd_ms" in r for r in rows)
    if cuda:
        header = ["dtype", "op", "shape", "ref fwd ms", "CUDA fwd ms", "speed-up fwd"]
        header += ["ref fwd+bwd ms", "CUDA fwd+bwd ms", "speed-up fwd+bwd"]
        gather = any("gather_fwd_bwd_ms" in r for r in rows)
        if gather:
            header += ["gather fwd+bwd ms"]
        body = [
            [r["dtype"], r["op"], _fmt(r["shape"]), r["ref_fwd_ms"], r["cuda_fwd_ms"],
             f"x{r['ref_fwd_ms'] / r['cuda_fwd_ms']:.2f}", r["ref_fwd_bwd_ms"], r["cuda_fwd_bwd_ms"],
             f"x{r['ref_fwd_bwd_ms'] / r['cuda_fwd_bwd_ms']:.2f}"]
            + ([r.get("gather_fwd_bwd_ms", "–")] if gather else [])
            for r in rows
        ]  # fmt: skip
        note = f"Median of {data.get('iters', '?')} iterations, batch {data.get('batch', '?')}, milliseconds."
        if gather:
            note += (
                " *gather*: upfirdn2d on the one-thread-per-output gather kernel"
                " (bench/ops.py's gather column) instead of the shared-memory tiles (CUDA column;"
                " in session 3's run the tiles served plain filtering only)."
            )
    else:
        header = ["dtype", "op", "shape", "ref fwd ms", "ref fwd+bwd ms"]
        body = [[r["dtype"], r["op"], _fmt(r["shape"]), r["ref_fwd_ms"], r["ref_fwd_bwd_ms"]] for r in rows]
        note = (
            "No GPU: the pure-PyTorch reference on the CPU only, small shapes ("
            + str(data.get("note", "reference only"))
            + ")."
        )
    return note + "\n\n" + md_table(header, body, right_from=3)


def _train_label(r: dict[str, Any]) -> str:
    label = f"{r['preset']}/{r.get('variant', 'fp16')}/{r['loss']}"
    return label + (f" + {r['lever']}" if r.get("lever") else "")


def render_train(data: dict[str, Any]) -> str:
    rows = data.get("results", [])
    nvidia = data.get("nvidia") or {}
    ratio = any("ratio_vs_nvidia" in r for r in rows)
    header = ["run", "device", "batch", "img/s", "ms/step", "peak memory", "vs baseline"]
    if ratio:
        header.append("ours/NVIDIA")
    bases = {
        (r["preset"], r.get("variant"), r["loss"]): r for r in rows if not r.get("lever") and "error" not in r
    }
    body = []
    for r in rows:
        if "error" in r:
            line = [_train_label(r), r["device"], str(r.get("batch", "")), "failed"]
            body.append(line + ["–"] * (len(header) - len(line)))
            continue
        if "peak_gpu_mem_gib" in r:
            mem = f"{r['peak_gpu_mem_gib']:.2f} GiB GPU"
        else:
            mem = f"{r.get('peak_rss_mib', math.nan):.0f} MiB RSS"
        base = bases.get((r["preset"], r.get("variant"), r["loss"])) if r.get("lever") else None
        vs = f"{r['img_per_s'] / base['img_per_s']:.3f}x" if base else "–"
        line = [_train_label(r), r["device"], str(r["batch"]), r["img_per_s"], r["ms_per_step"], mem, vs]
        if ratio:
            line.append(f"{r['ratio_vs_nvidia']:.2f}x" if "ratio_vs_nvidia" in r else "–")
        body.append(line)
    if nvidia.get("img_per_s"):
        mem = f"{nvidia['gpumem_gib']:.2f} GiB GPU" if nvidia.get("gpumem_gib") else "–"
        line = ["NVIDIA stylegan3 `train.py --cfg=stylegan2`", "cuda", "32", nvidia["img_per_s"]]
        line += [nvidia["sec_per_kimg"] * 32, mem, "–"] + (["1.00x"] if ratio else [])
        body.append(line)
    text = md_table(header, body, right_from=2)
    shares = []
    for r in rows:
        if "error" in r or "phases_ms" not in r or r.get("lever"):
            continue
        parts = [
            f"{k} {100 * v['share']:.0f}%" for k, v in r["phases_ms"].items() if v.get("mean") is not None
        ]
        shares.append(f"{_train_label(r)}: " + ", ".join(parts))
    if shares:
        text += "\n\nShare of the wall time per phase: " + "; ".join(shares) + "."
    if nvidia.get("note"):
        text += f"\n\nNVIDIA's row: {nvidia['note']}"
    for s in data.get("skipped", []):
        text += f"\n\n{s.get('reason')}."
    return text


def render_fid(data: dict[str, Any]) -> str:
    setup = data.get("setup", {})
    rows = data.get("throughput", {})
    base = rows.get("cleanfid", {}).get("images_per_s")
    names = {
        "cleanfid": "clean-fid `get_model_features` (as `compute_fid(gen=)`)",
        "clean": "ours, exact `clean`",
        "nvidia": "ours, NVIDIA's protocol (`legacy_tensorflow`, the default)",
        "fast": "ours, `fast`",
        "fast-bf16": "ours, `fast` + bf16 Inception",
    }
    body = []
    for name, r in rows.items():
        speed = f"x{r['images_per_s'] / base:.2f}" if base else "–"
        body.append(
            [names.get(name, name), r["images_per_s"], speed, f"{r['projected_fid50k_seconds'] / 60:.1f} min"]
        )
    text = (
        f"{setup.get('generator', '?')} at {setup.get('resolution', '?')} px, "
        f"{setup.get('num_gen', '?')} images, batch {setup.get('batch', '?')}, {setup.get('device', '?')}, "
        f"Inception: {setup.get('inception', '?')}.\n\n"
    )
    text += md_table(["case", "img/s", "vs clean-fid", "projected FID-50k"], body)
    fd = data.get("frechet_distance")
    if fd:
        text += (
            f"\n\nFrechet distance on 2048-d statistics: ours {fd['ours_seconds']:.2f} s, "
            f"clean-fid's `sqrtm` {fd['cleanfid_sqrtm_seconds']:.2f} s "
            + (
                f"(values agree to {fd['relative_difference']:.1e} relative)."
                if fd.get("relative_difference") is not None
                else f"({fd.get('cleanfid_error') or 'no comparison'})."
            )
        )
    for name, dev in (data.get("fast_path_deviation") or {}).items():
        text += (
            f"\n`{name}` vs exact on the same images: features max rel. error "
            f"{dev['max_feature_error_rel']:.1e}, FID rel. difference {dev['fid_relative_difference']:.1e}."
        )
    return text


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def render_generic(data: dict[str, Any]) -> str:
    """A table of the scalar fields of ``results`` (a list of records, or one record)."""
    results = data.get("results")
    if isinstance(results, dict):
        results = (
            [results]
            if all(_scalar(v) for v in results.values())
            else [{"case": k, **v} for k, v in results.items() if isinstance(v, dict)]
        )
    if not isinstance(results, list) or not results:
        return "(no table: the JSON has no `results` list)"
    columns: list[str] = []
    for r in results:
        for k, v in r.items():
            if _scalar(v) and k not in columns:
                columns.append(k)
    body = [[r.get(c) for c in columns] for r in results]
    return md_table(columns, body, right_from=1)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "ops": render_ops,
    "train": render_train,
    "fid": render_fid,
}


def device_of(data: dict[str, Any]) -> str:
    """``cpu`` or ``cuda``: where a result file's numbers were measured."""
    candidates = [data.get("device"), (data.get("setup") or {}).get("device")]
    results = data.get("results")
    if isinstance(results, list):
        candidates += [r.get("device") for r in results if isinstance(r, dict)]
        if any(isinstance(r, dict) and "cuda_fwd_ms" in r for r in results):
            candidates.append("cuda")
    for c in candidates:
        if isinstance(c, str) and c:
            return "cuda" if c.startswith("cuda") else "cpu"
    return "cuda" if (data.get("machine") or {}).get("gpu") else "cpu"


def load_results(results: Path, name: str) -> dict[str, dict[str, Any]]:
    """``{device: data}`` for a benchmark: ``<name>-<device>.json`` first, a legacy ``<name>.json`` for a
    device that has none."""
    found: dict[str, dict[str, Any]] = {}
    for device in DEVICES:
        path = result_path(results, name, device)
        if path.exists():
            found[device] = {**json.loads(path.read_text()), "_file": path.name}
    legacy = results / f"{name}.json"
    if legacy.exists():
        data = json.loads(legacy.read_text())
        found.setdefault(device_of(data), {**data, "_file": legacy.name})
    return found


def render_block(name: str, by_device: dict[str, dict[str, Any]], results: Path) -> str:
    """The generated markdown of one benchmark: per device a heading, the machine line and its table."""
    renderer = RENDERERS.get(name, render_generic)
    try:
        rel = results.resolve().relative_to(REPO)
    except ValueError:
        rel = results
    files = ", ".join(f"{rel}/{by_device[d]['_file']}" for d in DEVICES if "_file" in by_device.get(d, {}))
    parts = [f"<!-- generated by bench/run_all.py from {files}; edit outside the markers -->"]
    for device in DEVICES:
        if device not in by_device:
            continue
        data = by_device[device]
        parts.append(f"**{'GPU' if device == 'cuda' else 'CPU'}.** {machine_line(data.get('machine'))}")
        parts.append(renderer(data))
    return "\n\n".join(parts)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with everything between ``name``'s marker pair replaced by ``content`` (markers kept)."""
    start, end = markers(name)
    if text.count(start) != 1 or text.count(end) != 1:
        raise MarkerError(
            f"the README needs exactly one {start} and one {end} (found {text.count(start)} and "
            f"{text.count(end)}): put the pair where the {name} table belongs"
        )
    i, j = text.index(start), text.index(end)
    if j < i:
        raise MarkerError(f"{end} comes before {start} in the README")
    return text[: i + len(start)] + "\n" + content.strip("\n") + "\n" + text[j:]


def render_readme(readme: Path, results: Path, names: Sequence[str] | None = None) -> list[str]:
    """Re-render the blocks of ``names`` (default: every benchmark) that have results; returns those
    rendered. The README is written atomically, and only if something changed."""
    text = original = readme.read_text()
    rendered = []
    for name in names or list(BENCHES):
        by_device = load_results(results, name)
        if not by_device:
            continue
        text = replace_block(text, name, render_block(name, by_device, results))
        rendered.append(name)
    if text != original:
        _write_text(readme, text)
    return rendered


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# -- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=DEVICES, default=None, help="default: cuda when available")
    parser.add_argument("--quick", action="store_true", help="short smoke versions (not numbers to report)")
    parser.add_argument("--only", default=None, help=f"comma list of: {', '.join(BENCHES)}")
    parser.add_argument("--render-only", action="store_true", help="re-render the README, run nothing")
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="JSON folder")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md", help="README to update")
    parser.add_argument("--no-render", action="store_true", help="run, but leave the README alone")
    args = parser.parse_args(argv)

    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES]
        if unknown or not names:
            parser.error(
                f"--only: unknown benchmark(s) {', '.join(unknown) or '(none)'}; known: {', '.join(BENCHES)}"
            )
    failed = []
    if not args.render_only:
        device = args.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        args.results.mkdir(parents=True, exist_ok=True)
        runs = []
        for name in names:
            bench = BENCHES[name]
            if not bench.script.exists():
                print(f"\n=== {name}: {bench.script.relative_to(REPO)} not present, skipped")
                continue
            runs.append(run_bench(bench, device, args.quick, args.results))
        failed = [r for r in runs if not r["ok"]]
        summary = [[r["name"], str(r["returncode"]), r["seconds"], r["out"]] for r in runs]
        print("\n" + md_table(["benchmark", "exit status", "seconds", "JSON"], summary))
    if not args.no_render:
        try:
            rendered = render_readme(args.readme, args.results, names)
        except MarkerError as err:
            print(f"run_all: {args.readme}: {err}", file=sys.stderr)
            return 2
        print(f"\nrendered into {args.readme}: {', '.join(rendered) or 'nothing (no results)'}")
    for r in failed:
        print(
            f"run_all: {r['name']} failed (exit status {r['returncode']}; no fresh {r['out']})",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
