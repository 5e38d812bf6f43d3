"""How close our training step is to NVIDIA's own code, on the machine this runs on.

    python bench/nvidia_iterations.py [--variants logistic,rooted] [--out JSON]

``tests/test_nvidia_iterations.py`` runs 4 iterations of ``FinetuneModule.training_step`` with the random
draws stored in ``tests/fixtures/nvidia/tiny32.train4.npz`` and compares the final G, D and G_ema with the
ones NVIDIA's stylegan2-ada-pytorch wrote into that fixture (its README says how). Its tolerances cannot be
"bit-exact": float32 rounding depends on the CPU's instruction set (the kernels PyTorch picks for AVX2,
AVX-512, ...), and Adam's first steps turn rounding in nearly cancelling gradients into visible fractions
of a step. The yardstick is NVIDIA's own code re-run here with the same draws: how far it lands from its
own fixture is how far any correct implementation may land on this machine.

For each variant (``logistic``: our loss ``logistic`` and NVIDIA's loss as it is; ``rooted``: our loss
``rooted:2`` and NVIDIA's ``softplus(u)`` replaced by ``k * (1 + exp(u)) ** (1 / k)``, k = 2, in float32,
as the fixture README says) and each of G, D, G_ema, three comparisons: ours vs the fixture, NVIDIA-here
vs the fixture, ours vs NVIDIA-here, each as max |diff| and the share of elements within 1e-6. Printed as a
table with the CPU capability (``torch.backends.cpu.get_cpu_capability()``), torch version and thread
count, and written as JSON to ``--out`` (default ``bench/results/nvidia-iterations-cpu.json``) once
everything has run.

NVIDIA's code may be used for non-commercial work only, so it is never committed: it is fetched into the
ignored ``.ref/stylegan2-ada-pytorch`` (see ``bench/nvidia_ref.py``). This file imports it from there at run
time, copies none of it, and drives its ``legacy.load_network_pkl`` and ``StyleGAN2Loss`` through the
phases of its training loop (Gmain, Greg, Dmain, Dreg; lazy-regularization Adam; G_ema), with these patches,
all undone afterwards: a ``click`` stub (``legacy.py`` imports it for its command line only), a
``torch_utils.persistence`` import hook that supplies ``training/networks.py`` as the networks' module
source (the fixture pickle's embedded source is a placeholder), ``torch.randn_like`` returning the stored
path-length noise times sqrt(H * W) (the loss divides it back), a wrapper that runs the synthesis network
with constant noise, and for ``rooted`` the replaced softplus. Without ``.ref/stylegan2-ada-pytorch`` only
ours vs the fixture is reported. Our side is run exactly as the test runs it (its ``_run_nvidia_recipe``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import math
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "tests", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import machine_info, write_json  # noqa: E402

NVIDIA_REF = REPO / ".ref" / "stylegan2-ada-pytorch"
FIXTURE_DIR = REPO / "tests" / "fixtures" / "nvidia"
DEFAULT_OUT = REPO / "bench" / "results" / "nvidia-iterations-cpu.json"
#: Our loss for each variant of the fixture.
VARIANTS = {"logistic": "logistic", "rooted": "rooted:2"}
NETS = ("G", "D", "G_ema")
ROOTED_K = 2
CLOSE = 1e-6
COMPARISONS = (
    ("ours_vs_fixture", "ours vs fixture"),
    ("nvidia_vs_fixture", "NVIDIA-here vs fixture"),
    ("ours_vs_nvidia", "ours vs NVIDIA-here"),
)

#: NVIDIA's modules this script drives (imported from ``.ref/stylegan2-ada-pytorch``).
NVIDIA_MODULES = ("dnnlib", "legacy", "torch_utils.misc", "torch_utils.ops.conv2d_gradfix", "training.loss")

StateDicts = dict[str, dict[str, torch.Tensor]]
Modules = dict[str, types.ModuleType]


# -- comparisons -------------------------------------------------------------------------------------------


def fixture_state(train4: dict[str, np.ndarray], variant: str) -> StateDicts:
    """The fixture's final state dicts of G, D and G_ema for ``variant`` (NVIDIA's key names)."""
    out: StateDicts = {}
    for net in NETS:
        prefix = f"{variant}/{net}/"
        out[net] = {k[len(prefix) :]: torch.from_numpy(v) for k, v in train4.items() if k.startswith(prefix)}
    return out


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Max |a - b| over all elements and the share within ``CLOSE``; the key sets must agree."""
    if sorted(a) != sorted(b):
        raise SystemExit(f"state_dict keys differ: {sorted(set(a) ^ set(b))}")
    diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in sorted(b)])
    return {
        "max_abs": diff.max().item(),
        "share_close": (diff <= CLOSE).double().mean().item(),
        "elements": diff.numel(),
    }


def _detached(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _adam_steps(opt: torch.optim.Optimizer) -> int:
    return max(int(state["step"]) for state in opt.state.values())


# -- ours ------------------------------------------------------------------------------------------------


def run_ours(train4: dict[str, np.ndarray], variant: str) -> dict[str, Any]:
    """Our ``FinetuneModule`` over the fixture's 4 iterations, exactly as the test runs it."""
    from test_nvidia_iterations import _run_nvidia_recipe

    module = _run_nvidia_recipe(str(FIXTURE_DIR / "tiny32.pkl"), train4, VARIANTS[variant])
    opt_g, opt_d = module.trainer.optimizers
    return {
        "state": {net: _detached(getattr(module, net)) for net in NETS},
        "pl_mean": float(module.pl_mean),
        "adam_steps": {"G": _adam_steps(opt_g), "D": _adam_steps(opt_d)},
    }


# -- NVIDIA's code ---------------------------------------------------------------------------------------


class ConstNoiseSynthesis(torch.nn.Module):
    """NVIDIA's synthesis network called with a fixed ``noise_mode`` (its loss passes only ``ws``)."""

    def __init__(self, synthesis: torch.nn.Module, noise_mode: str) -> None:
        super().__init__()
        self.synthesis = synthesis
        self.noise_mode = noise_mode

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        """The images for ``ws``."""
        return self.synthesis(ws, noise_mode=self.noise_mode)


def rooted_softplus(u: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The paper authors' stand-in for ``softplus(u)``: ``k * (1 + e^u) ** (1 / k)`` in float32."""
    return ROOTED_K * (1 + torch.exp(u)) ** (1 / ROOTED_K)


def _click_stub() -> types.ModuleType:
    """Enough of ``click`` for ``legacy.py``'s command-line decorators, which are never called here."""
    stub = types.ModuleType("click")

    def decorator_factory(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        return lambda f: f

    stub.command = decorator_factory
    stub.option = decorator_factory
    stub.pass_context = lambda f: f
    return stub


@contextlib.contextmanager
def nvidia_code(ref: Path) -> Iterator[Modules]:
    """NVIDIA's modules imported from ``ref``, with the click stub and the persistence import hook in
    place; ``sys.path``, ``sys.modules['click']`` and the import hooks are restored on exit."""
    saved_path = list(sys.path)
    saved_click = sys.modules.get("click")
    networks_src = (ref / "training" / "networks.py").read_text(encoding="utf-8-sig")

    def supply_source(meta: Any) -> Any:
        if meta.module_src.startswith("# embedded module source removed"):
            meta.module_src = networks_src
        return meta

    persistence = None
    try:
        if saved_click is None:
            sys.modules["click"] = _click_stub()
        sys.path.insert(0, str(ref))
        mods = {name: importlib.import_module(name) for name in NVIDIA_MODULES}
        persistence = importlib.import_module("torch_utils.persistence")
        persistence.import_hook(supply_source)
        yield mods
    finally:
        if persistence is not None and supply_source in persistence._import_hooks:
            persistence._import_hooks.remove(supply_source)
        sys.path[:] = saved_path
        if saved_click is None:
            sys.modules.pop("click", None)
        else:
            sys.modules["click"] = saved_click


def run_nvidia(mods: Modules, train4: dict[str, np.ndarray], variant: str) -> dict[str, Any]:
    """NVIDIA's loss and networks over the fixture's 4 iterations, phases as its training loop runs them."""
    settings = ast.literal_eval(str(train4["settings"]))
    misc, gradfix = mods["torch_utils.misc"], mods["torch_utils.ops.conv2d_gradfix"]
    with open(FIXTURE_DIR / "tiny32.pkl", "rb") as f:
        nets = mods["legacy"].load_network_pkl(f)
    G = nets["G"].train().requires_grad_(False)
    D = nets["D"].train().requires_grad_(False)
    G_ema = nets["G_ema"].eval().requires_grad_(False)
    loss = mods["training.loss"].StyleGAN2Loss(
        device=torch.device("cpu"),
        G_mapping=G.mapping,
        G_synthesis=ConstNoiseSynthesis(G.synthesis, settings["noise_mode"]),
        D=D,
        augment_pipe=None,
        style_mixing_prob=settings["style_mixing_prob"],
        r1_gamma=settings["r1_gamma"],
        pl_batch_shrink=settings["pl_batch_shrink"],
        pl_decay=settings["pl_decay"],
        pl_weight=settings["pl_weight"],
    )
    # (phase, network, interval, optimizer): one lazy-regularization Adam per network
    phases: list[tuple[str, torch.nn.Module, int, torch.optim.Optimizer]] = []
    for name, net, interval in (("G", G, settings["G_reg_interval"]), ("D", D, settings["D_reg_interval"])):
        c = interval / (interval + 1)
        betas = [b**c for b in settings["betas"]]
        opt = torch.optim.Adam(net.parameters(), lr=settings["lr"] * c, betas=betas, eps=settings["eps"])
        phases += [(f"{name}main", net, 1, opt), (f"{name}reg", net, interval, opt)]
    batch = settings["batch"]
    no_labels = torch.zeros([batch, 0])
    beta = 0.5 ** (batch / max(settings["ema_kimg"] * 1000, 1e-8))
    pl_noise: list[torch.Tensor] = []

    def stored_pl_noise(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if tuple(pl_noise[0].shape) != tuple(x.shape):
            raise RuntimeError(f"randn_like{tuple(x.shape)} is not the path-length probe")
        return pl_noise[0] * math.sqrt(x.shape[2] * x.shape[3])

    saved = (torch.randn_like, torch.nn.functional.softplus, gradfix.enabled)
    torch.manual_seed(0)
    try:
        gradfix.enabled = True
        torch.randn_like = stored_pl_noise
        if variant == "rooted":
            torch.nn.functional.softplus = rooted_softplus
        for it in range(len(train4["real"])):
            real = torch.from_numpy(train4["real"][it])
            pl_noise[:] = [torch.from_numpy(train4["pl_noise"][it])]
            for name, net, interval, opt in phases:
                if it % interval:
                    continue
                opt.zero_grad(set_to_none=True)
                net.requires_grad_(True)
                loss.accumulate_gradients(
                    phase=name,
                    real_img=real,
                    real_c=no_labels,
                    gen_z=torch.from_numpy(train4[f"z_{name}"][it]),
                    gen_c=no_labels,
                    sync=True,
                    gain=interval,
                )
                net.requires_grad_(False)
                for p in net.parameters():
                    if p.grad is not None:
                        misc.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
                opt.step()
            with torch.no_grad():
                for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
                    p_ema.copy_(torch.lerp(p, p_ema, beta))
                for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
                    b_ema.copy_(b)
    finally:
        torch.randn_like, torch.nn.functional.softplus, gradfix.enabled = saved
    return {
        "state": {"G": _detached(G), "D": _detached(D), "G_ema": _detached(G_ema)},
        "pl_mean": float(loss.pl_mean),
        "adam_steps": {"G": _adam_steps(phases[0][3]), "D": _adam_steps(phases[2][3])},
    }


# -- report ----------------------------------------------------------------------------------------------


def _cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return f"{'-':>22}"
    return f"{stats['max_abs']:>10.3g} {100 * stats['share_close']:>10.4f}%"


def print_table(results: dict[str, Any], with_nvidia: bool) -> None:
    """One row per variant and network; per comparison max |diff| and the share within ``CLOSE``."""
    columns = COMPARISONS if with_nvidia else COMPARISONS[:1]
    print(f"\n{'variant':<9} {'net':<6}" + "".join(f" | {title:^22}" for _, title in columns))
    print(f"{'':<9} {'':<6}" + "".join(f" | {'max|d|':>10} {f'<={CLOSE:g}':>11}" for _ in columns))
    for variant, result in results.items():
        for net in NETS:
            row = result["nets"][net]
            print(f"{variant:<9} {net:<6}" + "".join(f" | {_cell(row.get(key))}" for key, _ in columns))
    for variant, result in results.items():
        print(f"{variant}: pl_mean {result['pl_mean']}; Adam steps {result['adam_steps']}")


def main(argv: list[str] | None = None) -> None:
    """Run the variants, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: logistic,rooted")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)} (got {args.variants!r})")
    # the warnings the test suite filters (pyproject.toml): G_ema stays in eval mode on purpose
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="lightning_utilities")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

    with np.load(FIXTURE_DIR / "tiny32.train4.npz") as data:
        train4 = {k: data[k] for k in data.files}
    with_nvidia = (NVIDIA_REF / "training" / "loss.py").is_file()
    if not with_nvidia:
        print(
            f"{NVIDIA_REF.relative_to(REPO)} not there (NVIDIA's code is non-commercial, never committed: "
            "fetch NVlabs/stylegan2-ada-pytorch into the ignored .ref/, see bench/nvidia_ref.py); "
            "reporting ours vs the fixture only"
        )

    # ours first, before NVIDIA's modules are imported into this process
    ours = {variant: run_ours(train4, variant) for variant in variants}
    nvidia: dict[str, dict[str, Any]] = {}
    if with_nvidia:
        with nvidia_code(NVIDIA_REF) as mods:
            nvidia = {variant: run_nvidia(mods, train4, variant) for variant in variants}

    results: dict[str, Any] = {}
    for variant in variants:
        fixture = fixture_state(train4, variant)
        nets: dict[str, dict[str, Any]] = {}
        for net in NETS:
            row = {"ours_vs_fixture": compare(ours[variant]["state"][net], fixture[net])}
            if variant in nvidia:
                row["nvidia_vs_fixture"] = compare(nvidia[variant]["state"][net], fixture[net])
                row["ours_vs_nvidia"] = compare(ours[variant]["state"][net], nvidia[variant]["state"][net])
            nets[net] = row
        results[variant] = {
            "our_loss": VARIANTS[variant],
            "nets": nets,
            "pl_mean": {
                "fixture": float(train4[f"{variant}/pl_mean"]),
                "ours": ours[variant]["pl_mean"],
                "nvidia_here": nvidia[variant]["pl_mean"] if variant in nvidia else None,
            },
            "adam_steps": {
                "fixture": {net: int(train4[f"{variant}/{net}_adam_steps"]) for net in ("G", "D")},
                "ours": ours[variant]["adam_steps"],
                "nvidia_here": nvidia[variant]["adam_steps"] if variant in nvidia else None,
            },
        }

    capability = torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    print(f"\ncpu capability {capability}, torch {torch.__version__}, {threads} threads")
    print_table(results, with_nvidia)
    info = machine_info()
    info["cpu_capability"] = capability
    write_json(
        args.out,
        {
            "benchmark": "nvidia_iterations",
            "machine": info,
            "cpu_capability": capability,
            "torch": torch.__version__,
            "threads": threads,
            "nvidia_ref": str(NVIDIA_REF.relative_to(REPO)) if with_nvidia else None,
            "close": CLOSE,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
