"""The speed levers of FinetuneModule (model.speed: channels_last, tf32, fused_optimizer, sync_free) leave the
training step's results unchanged on the CPU: two real steps with each lever end where the plain step
ends (up to float rounding), and each lever is off by default."""

from __future__ import annotations

import contextlib
import traceback

import pytest
import torch
from conftest import fit_batches

from rootedgan.training.module import FinetuneModule, use_channels_last

G_KWARGS = dict(
    z_dim=32,
    c_dim=0,
    w_dim=32,
    img_resolution=16,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=2, conv_clamp=256),
)
D_KWARGS = dict(
    c_dim=0,
    img_resolution=16,
    img_channels=3,
    channel_base=256,
    channel_max=32,
    num_fp16_res=2,
    conv_clamp=256,
    epilogue_kwargs=dict(mbstd_group_size=2),
)
HPARAMS = dict(
    reg=dict(r1_gamma=1.0, r1_interval=2, pl_interval=2, style_mixing_prob=0.9), ema=dict(kimg=0.01)
)


def _train(steps: int = 2, **levers) -> FinetuneModule:
    torch.manual_seed(0)
    module = FinetuneModule(g_kwargs=G_KWARGS, d_kwargs=D_KWARGS, total_kimg=1.0, **HPARAMS, speed=levers)
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.zeros(4, 0))
        for _ in range(steps)
    ]
    fit_batches(module, batches)
    return module


@pytest.fixture(scope="module")
def plain() -> FinetuneModule:
    return _train()


def _diffs(a: FinetuneModule, b: FinetuneModule) -> torch.Tensor:
    out = []
    for net in ("G", "D", "G_ema"):
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        out += [(value.float() - sb[key].float()).abs().flatten() for key, value in sa.items()]
    return torch.cat(out)


def _max_diff(a: FinetuneModule, b: FinetuneModule) -> float:
    return _diffs(a, b).max().item()


def assert_same_training(a: FinetuneModule, b: FinetuneModule) -> None:
    """Equal up to float rounding. Adam divides by each element's gradient RMS, so an element whose
    gradient is ~eps turns a rounding difference into a visible fraction of a step (lr 2e-3): allow a
    few such elements up to 1e-4, and require 99.9 % of all within 1e-5 (measured for channels_last and
    the fused optimizer: max 4.6e-5, 99.9 % within 7e-6, 90 % within 1.2e-7)."""
    diff = _diffs(a, b)
    assert diff.max().item() < 1e-4
    assert (diff <= 1e-5).double().mean().item() >= 0.999


def test_levers_are_off_by_default():
    speed = FinetuneModule(g_kwargs=G_KWARGS, d_kwargs=D_KWARGS).speed
    assert speed.channels_last is False
    assert speed.tf32 is None  # PyTorch's own setting
    assert speed.fused_optimizer is False


@pytest.mark.slow
@pytest.mark.parametrize(
    "levers",
    [
        dict(channels_last=True),
        dict(tf32=False),
        dict(fused_optimizer=True),
        dict(sync_free=True),
    ],
    ids=lambda d: next(iter(d)),
)
def test_lever_gives_the_same_training_step(plain, levers):
    module = _train(**levers)
    assert int(module.step_idx) == 2 and module.phase_counts == plain.phase_counts
    assert_same_training(module, plain)


def test_the_check_above_can_fail(plain):
    """A real change of the step (another learning rate) moves the weights far beyond the tolerance, and
    the plain step itself is deterministic."""
    assert _max_diff(_train(), plain) == 0.0
    HPARAMS["optim"] = dict(g_lr=0.004)
    try:
        changed = _train()
    finally:
        del HPARAMS["optim"]
    assert _max_diff(changed, plain) > 1e-3


def test_channels_last_switches_only_the_fp16_blocks():
    torch.manual_seed(0)
    module = FinetuneModule(g_kwargs=G_KWARGS, d_kwargs=D_KWARGS, **HPARAMS)
    use_channels_last(module.G, module.D)
    for net in (module.G, module.D):
        for block in net.modules():
            if not hasattr(block, "channels_last") or not hasattr(block, "use_fp16"):
                continue
            assert block.channels_last == block.use_fp16
            for p in block.parameters(recurse=False):
                if p.ndim == 4:
                    assert p.is_contiguous(memory_format=torch.channels_last) == block.use_fp16


def test_tf32_lever_sets_the_backend_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        _train(steps=1, tf32=False)
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- no host synchronisation inside a step ---------------------------------------------------------------

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def host_reads(calls: list):
    """Record every read of a tensor's value on the host (what waits for the GPU's queue on a GPU), except
    the style-mixing draw (made on the CPU generator on purpose) and the fused bias_act's clamp check, which
    reads CPU tensors only (``stylegan_ops._bias_act_fused._inside``)."""
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def watch(name, read):
        def watched(self, *args, **kwargs):
            frames = traceback.extract_stack(limit=12)[:-1]
            if not any(frame.name in ("mixing_cutoff", "_inside") for frame in frames):
                calls.append(f"{name} at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}")
            return read(self, *args, **kwargs)

        return watched

    for name, read in originals.items():
        setattr(torch.Tensor, name, watch(name, read))
    try:
        yield
    finally:
        for name, read in originals.items():
            setattr(torch.Tensor, name, read)


def _reads_in_training_steps(**speed) -> list[str]:
    torch.manual_seed(0)
    module = FinetuneModule(g_kwargs=G_KWARGS, d_kwargs=D_KWARGS, total_kimg=1.0, **HPARAMS, speed=speed)
    calls: list[str] = []
    step = module.training_step

    def watched_step(*args, **kwargs):
        with host_reads(calls):
            return step(*args, **kwargs)

    module.training_step = watched_step
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.zeros(4, 0))]
    fit_batches(module, batches * 4)  # 4 steps: every phase, R1 and path length included
    assert module.phase_counts == {"Gmain": 4, "Greg": 2, "Dmain": 4, "Dreg": 2}
    return calls


def test_sync_free_training_step_reads_nothing_back_from_the_device():
    assert _reads_in_training_steps(sync_free=True) == []
    # the check sees the reads of the default step: one decision per phase (and Adam's CPU step counters)
    default = _reads_in_training_steps()
    assert sum(c.startswith("__bool__ at module.py") for c in default) == 12


def test_sync_free_skips_a_non_finite_phase_whole_and_counts_it(tiny32, shapes):
    """The fused optimizer is told the phase was bad: weights and Adam state stay as they were; the
    count and the streak live on the device and stop the run when the logs read them."""
    from test_finetune import NaNGeneratorLoss, _trainer

    from rootedgan.data import ImageDataModule
    from rootedgan.training.module import NonFiniteTrainingError

    module = FinetuneModule(network=tiny32, reg=dict(pl_weight=0.0), guard=dict(max_bad_steps=2),
                            total_kimg=10.0, speed=dict(sync_free=True))  # fmt: skip
    module.adv_loss = NaNGeneratorLoss(k=2.0)
    g_before = {k: v.clone() for k, v in module.G.state_dict().items() if not k.endswith("w_avg")}
    trainer = _trainer(shapes.parent / "sync-free")
    trainer.log_every_n_steps = 3
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive"):
        trainer.fit(module, ImageDataModule(str(shapes), batch_size=4, num_workers=0))
    assert int(module.bad_phases) == 3 and int(module.step_idx) == 3  # read at the 3rd step's logs
    for key, value in g_before.items():
        assert torch.equal(module.G.state_dict()[key], value), key
    opt_g = trainer.optimizers[0]
    assert all(float(state["step"]) == 0 for state in opt_g.state.values())  # no Adam step was counted
