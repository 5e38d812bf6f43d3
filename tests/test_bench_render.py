"""bench/run_all.py: README blocks rendered from result JSONs between markers (and nothing else touched),
per-device result files, clear marker errors, and a real quick ops run on the CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import run_all  # noqa: E402

MACHINE_CPU = {"cpu": "Test CPU", "cpu_cores": 4, "cpu_cores_usable": 2, "torch": "2.13.0+cpu",
               "cuda": None, "gpu": None, "time": "2026-01-02T03:04:05"}  # fmt: skip
MACHINE_GPU = {**MACHINE_CPU, "gpu": "NVIDIA H200", "cuda": "12.8", "gpu_memory_gib": 139.8}

README = """# title

intro text that must stay

## Performance

hand-written paragraph.

<!-- bench:ops:start -->
old ops text
<!-- bench:ops:end -->

between the blocks

<!-- bench:train:start -->
old train text
<!-- bench:train:end -->

<!-- bench:fid:start -->
old fid text kept when there is no fid JSON
<!-- bench:fid:end -->

<!-- bench:augment:start -->
<!-- bench:augment:end -->

## After
tail text
"""


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def outside_blocks(text: str) -> str:
    """``text`` with the content between every marker pair removed."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("<!-- bench:") and line.endswith(":end -->"):
            inside = False
        if not inside:
            out.append(line)
        if line.startswith("<!-- bench:") and line.endswith(":start -->"):
            inside = True
    return "\n".join(out)


def block(text: str, name: str) -> str:
    start, end = run_all.markers(name)
    return text[text.index(start) + len(start) : text.index(end)]


@pytest.fixture
def results(tmp_path) -> Path:
    res = tmp_path / "results"
    ops_cpu = {"dtype": "float32", "op": "bias_act lrelu", "shape": [2, 512, 8, 8]}
    ops_cpu.update(ref_fwd_ms=0.25, ref_fwd_bwd_ms=0.5)
    write(res / "ops-cpu.json", {"machine": MACHINE_CPU, "note": "no GPU", "results": [ops_cpu]})
    ops_gpu = {"dtype": "float16", "op": "upsample2d", "shape": [32, 512, 4, 4]}
    ops_gpu.update(ref_fwd_ms=0.9, cuda_fwd_ms=0.3, ref_fwd_bwd_ms=2.0, cuda_fwd_bwd_ms=0.8)
    write(res / "ops-cuda.json", {"machine": MACHINE_GPU, "batch": 32, "iters": 50, "results": [ops_gpu]})
    phases = {
        "Gmain": {"count": 4, "mean": 70.0, "share": 0.25},
        "Greg": {"count": 2, "mean": None, "share": 0},
    }
    base = {"preset": "smoke", "device": "cpu", "batch": 8, "precision": "32"}
    ok = {**base, "loss": "rooted", "img_per_s": 32.81, "ms_per_step": 243.76, "peak_rss_mib": 544.2}
    failed = {**base, "loss": "logistic", "error": "worker exited with status 1", "log_tail": ""}
    skipped = [{"reason": "no GPU: paper256 not measured"}]
    write(res / "train.json", {"machine": MACHINE_CPU, "skipped": skipped, "results": [
        {**ok, "phases_ms": phases}, failed]})  # fmt: skip
    rows = [{"mode": "ada", "img_per_s": 123.456, "nested": {"x": 1}}, {"mode": "none", "img_per_s": 200.0}]
    write(res / "augment-cpu.json", {"machine": MACHINE_CPU, "results": rows})
    return res


def test_render_replaces_only_the_blocks_with_results(tmp_path, results):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    rendered = run_all.render_readme(readme, results)
    assert rendered == ["ops", "train", "augment"]  # fid has no JSON: left alone
    text = readme.read_text()
    assert outside_blocks(text) == outside_blocks(README)
    assert "old fid text kept when there is no fid JSON" in block(text, "fid")
    ops = block(text, "ops")
    assert "old ops text" not in ops
    # both devices, each with its machine line; the speed-up is computed from the JSON's times
    assert "**CPU.** Measured 2026-01-02 on Test CPU (2 cores), torch 2.13.0+cpu, no GPU." in ops
    assert "**GPU.** Measured 2026-01-02 on NVIDIA H200 (CUDA 12.8, 139.8 GiB)" in ops
    assert "| float16 | upsample2d | 32x512x4x4 | 0.9 | 0.3 | x3.00 | 2 | 0.8 | x2.50 |" in ops
    assert "| float32 | bias_act lrelu | 2x512x8x8 | 0.25 | 0.5 |" in ops
    train = block(text, "train")
    assert "| smoke/fp16/rooted | cpu | 8 | 32.8 | 244 | 544 MiB RSS | – |" in train
    assert "| smoke/fp16/logistic | cpu | 8 | failed |" in train
    assert "no GPU: paper256 not measured" in train and "train.json" in train  # legacy file, filed as CPU
    augment = block(text, "augment")  # unknown format: a table of the scalar fields
    assert "| mode | img_per_s |" in augment and "| ada | 123 |" in augment and "nested" not in augment
    # rendering again changes nothing
    run_all.render_readme(readme, results)
    assert readme.read_text() == text


def test_device_files_are_kept_apart(tmp_path, results):
    assert run_all.result_path(results, "ops", "cuda").name == "ops-cuda.json"
    both = run_all.load_results(results, "ops")
    assert set(both) == {"cpu", "cuda"} and both["cuda"]["machine"]["gpu"] == "NVIDIA H200"
    # a legacy <name>.json fills only the device it was measured on, never one with its own file
    write(results / "ops.json", {"machine": MACHINE_GPU, "results": [{"cuda_fwd_ms": 1.0}]})
    assert run_all.load_results(results, "ops")["cuda"]["_file"] == "ops-cuda.json"
    assert run_all.device_of({"machine": MACHINE_GPU, "setup": {"device": "cpu"}}) == "cpu"
    assert run_all.device_of({"machine": MACHINE_GPU}) == "cuda"


def test_missing_or_broken_markers_are_clear_errors(tmp_path, results):
    readme = tmp_path / "README.md"
    for broken in [
        README.replace("<!-- bench:train:start -->\n", ""),
        README.replace("<!-- bench:train:end -->", "<!-- bench:train:end -->\n<!-- bench:train:end -->"),
    ]:
        readme.write_text(broken)
        with pytest.raises(run_all.MarkerError, match=r"bench:train:start.*bench:train:end"):
            run_all.render_readme(readme, results)
        assert readme.read_text() == broken  # untouched on error
    swapped = README.replace("<!-- bench:ops:start -->", "@@").replace(
        "<!-- bench:ops:end -->", "<!-- bench:ops:start -->"
    )
    readme.write_text(swapped.replace("@@", "<!-- bench:ops:end -->"))
    with pytest.raises(run_all.MarkerError, match="comes before"):
        run_all.render_readme(readme, results, ["ops"])
    # through the command line: exit status 2 and the message
    readme.write_text(README.replace("<!-- bench:augment:start -->\n", ""))
    assert run_all.main(["--render-only", "--results", str(results), "--readme", str(readme)]) == 2


def test_only_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        run_all.main(["--render-only", "--only", "ops,nonsense", "--readme", str(tmp_path / "R.md")])


def test_quick_ops_run_on_the_cpu_writes_its_json_and_renders(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    res = tmp_path / "results"
    code = run_all.main(
        ["--device", "cpu", "--quick", "--only", "ops", "--results", str(res), "--readme", str(readme)]
    )
    assert code == 0
    data = json.loads((res / "ops-cpu.json").read_text())
    assert data["machine"]["gpu"] is None and data["results"]
    assert all(r["ref_fwd_ms"] > 0 and r["ref_fwd_bwd_ms"] > 0 for r in data["results"])
    ops = block(readme.read_text(), "ops")
    assert "**CPU.**" in ops and "bias_act lrelu" in ops
    assert block(readme.read_text(), "train") == block(README, "train")  # --only ops


FAKE_BENCH = """
import argparse, json, pathlib, sys
parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()
out = pathlib.Path(sys.argv[0]).parent / "results" / "augment.json"
out.parent.mkdir(exist_ok=True)
out.write_text(json.dumps({"machine": {}, "device": args.device, "results": [{"repeats": args.repeats}]}))
"""


def test_scripts_maintained_elsewhere_get_only_the_flags_they_have(tmp_path, monkeypatch):
    # a benchmark without --out or --quick: flags read from its --help; its own default file is filed
    # under the device
    (tmp_path / "augment.py").write_text(FAKE_BENCH)
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    argv, writes_out = run_all.bench_command(run_all.BENCHES["augment"], "cpu", True, tmp_path / "x.json")
    assert argv[1:] == [str(tmp_path / "augment.py"), "--device", "cpu", "--repeats", "1"] and not writes_out
    result = run_all.run_bench(run_all.BENCHES["augment"], "cpu", True, tmp_path / "results")
    assert result["ok"] and result["returncode"] == 0
    data = json.loads((tmp_path / "results" / "augment-cpu.json").read_text())
    assert data["results"] == [{"repeats": 1}] and data["device"] == "cpu"


def test_train_table_has_levers_against_their_baseline_and_nvidias_row():
    row = {"preset": "paper256", "variant": "fp16", "device": "cuda", "batch": 32, "precision": "32",
           "loss": "logistic", "peak_gpu_mem_gib": 9.68}  # fmt: skip
    data = {
        "machine": MACHINE_GPU,
        "results": [
            {**row, "img_per_s": 100.0, "ms_per_step": 320.0, "ratio_vs_nvidia": 100 / 140},
            {
                **row,
                "lever": "channels_last",
                "img_per_s": 87.0,
                "ms_per_step": 368.0,
                "ratio_vs_nvidia": 87 / 140,
            },
        ],
        "nvidia": {"sec_per_kimg": 1000 / 140, "img_per_s": 140.0, "gpumem_gib": 8.31, "note": "stylegan3."},
    }
    text = run_all.render_train(data)
    assert "| paper256/fp16/logistic | cuda | 32 | 100 | 320 | 9.68 GiB GPU | – | 0.71x |" in text
    assert (
        "| paper256/fp16/logistic + channels_last | cuda | 32 | 87 | 368 | 9.68 GiB GPU | 0.870x | 0.62x |"
        in text
    )
    assert (
        "| NVIDIA stylegan3 `train.py --cfg=stylegan2` | cuda | 32 | 140 | 229 | 8.31 GiB GPU | – | 1.00x |"
        in text
    )
    assert "NVIDIA's row: stylegan3." in text


# -- bench/train.py: rounds of the CPU side-by-side with NVIDIA's loop ----------------------------------


def _timing(step: float, **phases: float) -> dict:
    return {"ms_per_step": step, "phases_ms": {k: {"mean": v} for k, v in phases.items()}}


def test_cpu_rounds_pair_ours_with_nvidia_and_take_the_median(capsys):
    from bench import train

    rounds = [
        train._round_record("ours first", _timing(90.0, Gmain=30.0), _timing(100.0, Gmain=40.0)),
        train._round_record("NVIDIA first", _timing(80.0, Gmain=30.0), _timing(100.0, Gmain=30.0)),
        train._round_record("ours first", _timing(99.0), _timing(90.0)),
        train._round_record("NVIDIA first", {"error": "exit 1"}, _timing(90.0)),
    ]
    assert rounds[0]["ratio"] == pytest.approx(0.9) and rounds[0]["phase_ratio"] == {"Gmain": 0.75}
    assert rounds[2]["phase_ratio"] == {}
    summary = train._report_rounds(rounds)
    assert summary["rounds"] == 3  # the failed round is shown, not counted
    assert summary["ratio_median"] == pytest.approx(0.9)
    assert (summary["ratio_min"], summary["ratio_max"]) == pytest.approx((0.8, 1.1))
    assert summary["phase_ratio_median"] == pytest.approx({"Gmain": 0.875})
    out = capsys.readouterr().out
    assert "NVIDIA first" in out and "failed" in out
    assert "median step ratio 0.900x over 3 rounds (range 0.800-1.100x)" in out


def test_rounds_must_be_positive(capsys):
    from bench import train

    with pytest.raises(SystemExit):
        train.main(["--device", "cpu", "--rounds", "0"])
    assert "--rounds must be >= 1" in capsys.readouterr().err
