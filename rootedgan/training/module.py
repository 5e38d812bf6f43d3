"""The finetuning LightningModule: NVIDIA's StyleGAN2 training step with a pluggable adversarial loss.

One step (one real batch) runs NVIDIA's phases, each with its own ``zero_grad``, backward (weighted by the
phase's interval) and optimizer step: ``Gmain`` (G minimises ``phi(-D(G(z)))``), ``Greg`` (path length every
``reg.pl_interval`` steps), ``Dmain`` (D minimises ``phi(D(G(z))) + phi(-D(x))``) and ``Dreg`` (R1 every
``reg.r1_interval`` steps); so G's Adam takes ``N + N / pl_interval`` steps in N, which the
lazy-regularization rescale assumes. Then G_ema follows G. ``tests/test_nvidia_iterations.py`` checks the step
against NVIDIA's own iterations; README "What a step does" has the details.

A phase whose loss or gradient is not finite never reaches the weights and is counted (``model.guard``).
Every random draw comes from ``self.randomness`` (seeded per ``(seed, rank, step)``: resume is exact), and
under ``gan_ddp`` the module all-reduces each phase's gradients itself.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from rootedgan.checkpoints import load_network, save_network
from rootedgan.distributed import rank_world
from rootedgan.errors import UserError
from rootedgan.fileio import atomic_open
from rootedgan.networks import Discriminator, Generator
from rootedgan.sampling import class_labels, seed_latents
from rootedgan.training.adapter import base_reference, save_adapter
from rootedgan.training.augment import build_augment
from rootedgan.training.losses import DEFAULT_LOSS, make_loss, path_length, path_length_penalty, r1_penalty
from rootedgan.training.optim import build_optimizer, describe, group_settings
from rootedgan.training.orthogonal import OrthogonalConfig, OrthogonalFinetune
from rootedgan.training.randomness import SeededRandomness, StepRandomness
from rootedgan.training.resume import COUNTERS, check_resume_state
from rootedgan.training.settings import (
    AugmentConfig,
    EmaConfig,
    GuardConfig,
    OptimConfig,
    RegConfig,
    SpeedConfig,
    check_number,
)
from rootedgan.training.strategy import GANDDPStrategy


class NonFiniteTrainingError(UserError, RuntimeError):
    """Training produced non-finite losses or gradients for too many consecutive steps."""


@torch.no_grad()
def finite_output(G: nn.Module, n: int = 4) -> bool:
    """Whether ``G`` makes finite images of the grid seeds 0..n-1 (a synchronisation: used when stopping)."""
    device = next(G.parameters()).device
    z = torch.from_numpy(seed_latents(range(n), G.z_dim)).to(device)
    c = class_labels(G.c_dim, 0 if G.c_dim else None, n).to(device)
    return bool(torch.isfinite(G(z, c, noise_mode="const")).all())


def d_layers_from_input(D: nn.Module) -> list[nn.Module]:
    """D's layers in NVIDIA's ``freeze_layers`` order: per block from the input side, fromrgb, conv0,
    conv1, skip."""
    layers = []
    for res in D.block_resolutions:
        block = getattr(D, f"b{res}")
        layers += [getattr(block, n) for n in ("fromrgb", "conv0", "conv1", "skip") if hasattr(block, n)]
    return layers


def use_channels_last(*nets: nn.Module) -> None:
    """Switch the fp16 blocks of StyleGAN networks to channels-last memory format (weights and the
    activations they compute), as NVIDIA's ``fp16_channels_last=True`` does at construction."""
    for net in nets:
        for block in net.modules():
            if getattr(block, "use_fp16", False) and hasattr(block, "channels_last"):
                block.channels_last = True
                for p in block.parameters():
                    if p.ndim == 4:
                        p.data = p.data.contiguous(memory_format=torch.channels_last)


class FinetuneModule(L.LightningModule):
    """Finetune (or train) a StyleGAN2 with the rooted or logistic objective."""

    def __init__(
        self,
        network: str | None = None,
        g_kwargs: dict | None = None,
        d_kwargs: dict | None = None,
        loss: str | dict[str, Any] = DEFAULT_LOSS,
        optim: OptimConfig = OptimConfig(),
        reg: RegConfig = RegConfig(),
        ema: EmaConfig = EmaConfig(),
        augment: AugmentConfig = AugmentConfig(),
        orthogonal: OrthogonalConfig | None = None,
        freeze_d: int = 0,
        total_kimg: float = 1000.0,
        seed: int = 0,
        guard: GuardConfig = GuardConfig(),
        speed: SpeedConfig = SpeedConfig(),
    ) -> None:
        """
        Args:
            network: pretrained network to start from: path, URL or shortcut (NVIDIA .pkl, rosinality .pt,
                rootedgan .safetensors). None trains from scratch with ``g_kwargs``/``d_kwargs``.
            g_kwargs: Generator constructor arguments (NVIDIA's) when training from scratch.
            d_kwargs: Discriminator constructor arguments when training from scratch.
            loss: the adversarial loss: ``logistic``, ``rooted`` (root k = 20), ``rooted:K``, or a mapping
                ``{name: rooted, k: 20, max_grad: 1e6, subtract_k: false}`` (README "The rooted loss").
            optim: learning rates, Adam betas, optimizers.
            reg: R1, path length (lazy intervals) and style mixing.
            ema: G_ema's half-life and ramp-up.
            augment: what D sees (ADA, DiffAugment).
            orthogonal: orthogonal finetuning of G (OFT), on when set (``{}``: its defaults); null: every G
                parameter trains.
            freeze_d: freeze the first N layers of D from the input side (FreezeD).
            total_kimg: stop after this many thousand real images.
            seed: seed of latents and noise (each rank and step derives its own).
            guard: what non-finite losses or gradients do.
            speed: speed levers (same training step up to float rounding).
        """
        super().__init__()
        self.automatic_optimization = False
        self.adv_loss = make_loss(loss)
        self.optim, self.reg = OptimConfig.from_any(optim), RegConfig.from_any(reg)
        self.ema, augment_cfg = EmaConfig.from_any(ema), AugmentConfig.from_any(augment)
        self.guard, self.speed = GuardConfig.from_any(guard), SpeedConfig.from_any(speed)
        orth_cfg = None if orthogonal is None else OrthogonalConfig.from_any(orthogonal)
        check_number("model.total_kimg", total_kimg, 0, open_low=True)
        check_number("model.seed", seed, integer=True)
        check_number("model.freeze_d", freeze_d, 0, integer=True)
        self.total_kimg, self.seed = float(total_kimg), int(seed)
        self.save_hyperparameters(
            {
                "network": network,
                "g_kwargs": g_kwargs,
                "d_kwargs": d_kwargs,
                "loss": self.adv_loss.spec(),
                **{name: getattr(self, name).to_dict() for name in ("optim", "reg", "ema")},
                "augment": augment_cfg.to_dict(),
                "orthogonal": None if orth_cfg is None else orth_cfg.to_dict(),
                "freeze_d": freeze_d,
                "total_kimg": self.total_kimg,
                "seed": self.seed,
                "guard": self.guard.to_dict(),
                "speed": self.speed.to_dict(),
            }
        )
        self.G, self.D, self.G_ema, self.source_meta = self._build_networks(network, g_kwargs, d_kwargs)
        self.G.train()
        self.D.train()
        self.G_ema.requires_grad_(False)
        self.orth = None if orth_cfg is None else OrthogonalFinetune(orth_cfg, self.G, self.G_ema, network)
        self._adapter_base: dict[str, Any] | None = None  # see save_adapter
        self.d_frozen = self._freeze_d_layers(freeze_d)
        if self.speed.channels_last:
            use_channels_last(self.G, self.D, self.G_ema)
        self.register_buffer("pl_mean", torch.zeros([]))
        for name in COUNTERS:  # cur_nimg, step_idx, bad_phases, total_phases, bad_streak
            self.register_buffer(name, torch.zeros([], dtype=torch.long))
        self.register_buffer("worst_streak", torch.zeros([], dtype=torch.long), persistent=False)
        self.phase_counts: dict[str, int] = {"Gmain": 0, "Greg": 0, "Dmain": 0, "Dreg": 0}
        self.augment_pipe, self.ada = build_augment(augment_cfg)  # (None, None) for kind none
        self.randomness: StepRandomness = SeededRandomness(self.seed, rank=0)
        self._host_counters: tuple[int, int] | None = None  # (step, cur_nimg), see _counters
        self._bad_streak = 0
        self._grad_state: tuple[bool, bool] | None = None  # (G, D) requires_grad, see _requires_grad
        self._opt_g: Any = None
        self._opt_d: Any = None
        self._real_c: torch.Tensor | None = None
        self.last_step_logs: dict[str, Any] = {}
        self._last_step_time: float | None = None
        self._run_dir: Path | None = None

    # -- set-up -----------------------------------------------------------------------------------

    @staticmethod
    def _build_networks(
        network: str | None, g_kwargs: dict | None, d_kwargs: dict | None
    ) -> tuple[nn.Module, nn.Module, nn.Module, dict]:
        if network is None:
            if not g_kwargs or not d_kwargs:
                raise UserError(
                    "set model.network (a pretrained checkpoint) or both model.g_kwargs and model.d_kwargs"
                )
            G = Generator(**g_kwargs)
            return G, Discriminator(**d_kwargs), copy.deepcopy(G).eval(), {"source": None}
        nets = load_network(network)
        G, D, G_ema = nets.get("G"), nets.get("D"), nets.get("G_ema")
        if D is None:
            raise UserError(
                f"{network} holds no discriminator: finetuning needs one (NVIDIA pickles and "
                "rosinality checkpoints have it; a G-only export does not)"
            )
        G = copy.deepcopy(G_ema) if G is None else G
        G_ema = copy.deepcopy(G) if G_ema is None else G_ema
        return G, D, G_ema.eval(), {"source": network, **(nets.get("meta") or {})}

    def _freeze_d_layers(self, count: int) -> set[str]:
        layers = d_layers_from_input(self.D)
        if not 0 <= count <= len(layers):
            raise UserError(
                f"model.freeze_d must be in [0, {len(layers)}] for this discriminator, got {count}"
            )
        ids = {id(p) for layer in layers[:count] for p in layer.parameters()}
        frozen = {name for name, p in self.D.named_parameters() if id(p) in ids}
        for layer in layers[:count]:
            layer.requires_grad_(False)
        return frozen

    @property
    def img_resolution(self) -> int:
        return self.G.img_resolution

    @property
    def img_channels(self) -> int:
        return self.G.img_channels

    @property
    def c_dim(self) -> int:
        return self.G.c_dim

    @property
    def cur_kimg(self) -> float:
        """Thousands of real images shown so far (all ranks)."""
        return self._counters()[1] / 1000

    def train(self, mode: bool = True) -> FinetuneModule:
        super().train(mode)
        self.G_ema.eval()  # G_ema is never trained; keeps its w_avg out of training-mode updates
        return self

    def g_params(self) -> list[nn.Parameter]:
        if self.orth is not None:  # the rotations (+ magnitudes, train_extra); the base stays frozen
            return self.orth.parameters(self.G)
        return list(self.G.parameters())

    def export_networks(self) -> dict[str, nn.Module]:
        """G, D, G_ema as plain networks for ``save_network`` (orthogonal mode: merged copies)."""
        if self.orth is not None:
            return self.orth.export(self.G, self.D, self.G_ema)
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def save_adapter(self, path: str | Path) -> Path | None:
        """Orthogonal mode with a pretrained base: write the adapter file (rotations of G and G_ema and a
        reference to the base checkpoint) and return its path; otherwise None."""
        if self.orth is None or self.orth.base_source is None:
            return None
        if self._adapter_base is None:  # path, size, sha256 of the base file: hashed once per run
            self._adapter_base = base_reference(self.orth.base_source)
        nets = {"G": self.G, "G_ema": self.G_ema}
        return save_adapter(path, nets, self.orth.cfg, self._adapter_base, self.provenance())

    def d_params(self) -> list[nn.Parameter]:
        return [p for n, p in self.D.named_parameters() if n not in self.d_frozen]

    def _optimizer_settings(self, which: str) -> tuple[str, float, tuple[float, float], int]:
        """``(name, lr, betas, lazy-regularization interval)`` of G's or D's optimizer, from the settings."""
        o = self.optim
        if which == "G":
            return o.g_optimizer, o.g_lr, o.betas, self.reg.g_interval
        return o.d_optimizer, o.d_lr, o.betas, self.reg.d_interval

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opts = []
        for which, params in (("G", self.g_params()), ("D", self.d_params())):
            name, lr, betas, interval = self._optimizer_settings(which)
            fused = self.speed.fused_optimizer or self.speed.sync_free  # sync_free: the fused skip
            opts.append(build_optimizer(name, params, lr, betas, interval, fused))
        opt_g, opt_d = opts
        if self.orth is not None and self.orth.cfg.eps is not None:  # COFT: project after every G step
            opt_g.register_step_post_hook(lambda *_: self.orth.project_(self.G))
        return [opt_g, opt_d]

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, GANDDPStrategy):
            raise UserError(
                "rootedgan synchronises GAN gradients itself: use trainer.strategy: gan_ddp for several "
                f"devices (got {type(strategy).__name__})"
            )

    # -- one step ---------------------------------------------------------------------------------

    def _counters(self) -> tuple[int, int]:
        """``(step, cur_nimg)`` as Python ints, read from the buffers once (after a start or a resume) and
        then kept on the host: reading the buffers every step would synchronise with the GPU."""
        if self._host_counters is None:
            self._host_counters = (int(self.step_idx), int(self.cur_nimg))
            self._bad_streak = int(self.bad_streak)
        return self._host_counters

    def _requires_grad(self, g: bool, d: bool) -> None:
        """Which network's parameters take gradients (G: the trainable ones; D: all but the frozen)."""
        if self._grad_state == (g, d):
            return
        if self.orth is not None:
            self.orth.set_requires_grad(self.G, g)
        else:
            self.G.requires_grad_(g)
        for name, p in self.D.named_parameters():
            p.requires_grad_(d and name not in self.d_frozen)
        self._grad_state = (g, d)

    def _run_G(self, phase: str, n: int, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Generate ``n`` images for a phase: mapping, style mixing past a random cutoff, synthesis.
        Returns ``(img, ws)``."""
        rnd = self.randomness
        z = rnd.latents(phase, n, self.G.z_dim, self.device)
        ws = self.G.mapping(z, c)
        cutoff = rnd.mixing_cutoff(phase, ws.shape[1], self.reg.style_mixing_prob)
        if cutoff is not None:
            mixed = self.G.mapping(rnd.mixing_latents(phase, z), c, skip_w_avg_update=True)
            ws = torch.cat([ws[:, :cutoff], mixed[:, cutoff:]], dim=1)
        if self._grad_state == (True, False) and not ws.requires_grad:
            ws.requires_grad_(True)  # frozen mapping (orthogonal mode): path length needs d img / d ws
        return self.G.synthesis(ws, noise_mode=rnd.noise_mode), ws

    def _run_D(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.D(self.augment_pipe(img) if self.augment_pipe is not None else img, c)

    @staticmethod
    def _rank_mean(value: torch.Tensor) -> torch.Tensor:
        """Mean of ``value`` over all ranks (itself when not distributed)."""
        _, world = rank_world()
        if world == 1:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value / world

    def _grad_scaler(self) -> Any:
        """The GradScaler of ``16-mixed`` precision, else None."""
        if self._trainer is None:
            return None
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def _finish_phase(
        self, name: str, loss: torch.Tensor, params: list[nn.Parameter], opt: Any
    ) -> bool | torch.Tensor:
        """Backward, all-reduce the phase's gradients across ranks, then step only if loss and gradients
        are finite. The decision is one host synchronisation per phase; with ``speed.sync_free`` it stays
        on the device (the fused optimizer skips its whole update, state included, when told the phase was
        bad) and a 0-dim bool tensor is returned instead."""
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        loss_bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        _, world = rank_world()
        if world > 1:  # same gradients, and so the same decision, on every rank
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.flatten() for g in grads] + [loss_bad])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p, g in zip(params, grads, strict=True):
                p.grad = flat[offset : offset + g.numel()].view_as(p)
                offset += g.numel()
            flags = torch.stack([flat[-1], (~torch.isfinite(flat).all()).float()])
        else:
            grads = [p.grad for p in params if p.grad is not None]
            grads_bad = torch.zeros_like(loss_bad)
            if grads:
                grads_bad = (
                    (~torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())).float().reshape(1)
                )
            flags = torch.cat([loss_bad, grads_bad])
        self.total_phases += 1
        self.phase_counts[name] += 1
        # fp16 loss scaling: inf gradients are expected while the scale is searched. The scaler skips those
        # steps and lowers the scale itself (opt.step() must run for that): only a non-finite loss is bad.
        scaled = self._grad_scaler() is not None
        bad = flags[0] > 0 if scaled else flags.sum() > 0  # flags: [loss bad, grads bad], each >= 0
        if self.speed.sync_free:
            if not scaled:
                opt.optimizer.found_inf = bad.float()
            opt.step()
        else:
            bad = bool(bad)  # the phase's one host synchronisation
            if scaled or not bad:
                opt.step()
        self.bad_phases += bad
        opt.zero_grad(set_to_none=True)
        return ~bad if self.speed.sync_free else not bad

    # Each phase is NVIDIA's (training/loss.py of stylegan2-ada-pytorch): its own draws, backward with
    # gain = its interval, and its own optimizer step.

    def _phase_gmain(self, batch_size: int, logs: dict[str, Any]) -> bool:
        """G minimises ``phi(-D(G(z)))``."""
        self._requires_grad(g=True, d=False)
        gen_c = self.randomness.labels("Gmain", self._real_c)
        fake, _ = self._run_G("Gmain", batch_size, gen_c)
        fake_logits = self._run_D(fake, gen_c)
        loss = self.adv_loss.generator(fake_logits).mean()
        logs["Loss/G/loss"] = loss.detach()
        logs["Loss/scores/fake"] = fake_logits.detach().mean()
        logs["Loss/rooted_capped_frac/G"] = self.adv_loss.capped(-fake_logits)
        return self._finish_phase("Gmain", loss, self.g_params(), self._opt_g)

    def _phase_greg(self, batch_size: int, logs: dict[str, Any]) -> bool:
        """Path-length regularization on ``batch / pl_batch_shrink`` samples, weighted by the interval."""
        reg = self.reg
        self._requires_grad(g=True, d=False)
        n = max(batch_size // reg.pl_batch_shrink, 1)
        gen_c = self.randomness.labels("Greg", self._real_c)[:n]
        img, ws = self._run_G("Greg", n, gen_c)
        lengths = path_length(img, ws, self.randomness.pl_noise(img))
        penalty, new_mean = path_length_penalty(
            lengths, self.pl_mean, reg.pl_decay, batch_mean=self._rank_mean(lengths.detach().mean())
        )
        self.pl_mean.copy_(new_mean.detach())
        # img * 0: every parameter that made the image gets a (zero) gradient, as in NVIDIA's loss, so
        # Adam counts this step for all of them (its bias correction depends on that count).
        loss = (img[:, 0, 0, 0] * 0 + penalty * reg.pl_weight).mean() * max(reg.pl_interval, 1)
        logs["Loss/pl_penalty"] = penalty.detach().mean()
        return self._finish_phase("Greg", loss, self.g_params(), self._opt_g)

    def _phase_dmain(self, real: torch.Tensor, batch_size: int, logs: dict[str, Any]) -> bool:
        """D minimises ``phi(D(G(z))) + phi(-D(x))``."""
        self._requires_grad(g=False, d=True)
        gen_c = self.randomness.labels("Dmain", self._real_c)
        with torch.no_grad():
            fake, _ = self._run_G("Dmain", batch_size, gen_c)
        fake_logits = self._run_D(fake, gen_c)
        real_logits = self._run_D(real, self._real_c)
        if self.ada is not None:  # ADA's overfitting statistic, sign(D(real))
            self.ada.observe(real_logits)
        loss = (
            self.adv_loss.discriminator_fake(fake_logits) + self.adv_loss.discriminator_real(real_logits)
        ).mean()
        logs["Loss/D/loss"] = loss.detach()
        logs["Loss/scores/real"] = real_logits.detach().mean()
        logs["Loss/rooted_capped_frac/D_fake"] = self.adv_loss.capped(fake_logits)
        logs["Loss/rooted_capped_frac/D_real"] = self.adv_loss.capped(-real_logits)
        return self._finish_phase("Dmain", loss, self.d_params(), self._opt_d)

    def _phase_dreg(self, real: torch.Tensor, logs: dict[str, Any]) -> bool:
        """R1: ``gamma / 2 * ||grad_x D(x)||^2`` on the reals (through the augmentation), weighted by the
        interval; a D step of its own, as in NVIDIA's schedule."""
        reg = self.reg
        self._requires_grad(g=False, d=True)
        real_in = real.detach().requires_grad_(True)
        real_logits = self._run_D(real_in, self._real_c)
        if self.ada is not None:  # NVIDIA reports sign(D(real)) in Dreg too
            self.ada.observe(real_logits)
        r1 = r1_penalty(real_in, real_logits)
        # real_logits * 0: a (zero) gradient for every D parameter, as in NVIDIA's loss (see _phase_greg)
        loss = (real_logits.flatten() * 0 + r1 * (reg.r1_gamma / 2)).mean() * max(reg.r1_interval, 1)
        logs["Loss/r1_penalty"] = r1.detach().mean()
        return self._finish_phase("Dreg", loss, self.d_params(), self._opt_d)

    def finished(self) -> bool:
        """True once ``total_kimg`` thousand images have been shown."""
        return self._counters()[1] >= self.total_kimg * 1000

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # A resumed run that is already finished trains no further step (-1 ends the epoch at once).
        if self.finished():
            self.trainer.should_stop = True
            return -1
        return None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """One real batch: Gmain, Greg (every ``pl_interval``), Dmain, Dreg (every ``r1_interval``), then
        G_ema and the counters."""
        reg = self.reg
        self._grad_state = None  # requires_grad flags may have been changed outside the step
        self._opt_g, self._opt_d = self.optimizers()
        img, self._real_c = batch  # uint8 images (the data module's) to [-1, 1]; float images as they are
        real = img.to(torch.float32) / 127.5 - 1 if img.dtype == torch.uint8 else img.to(torch.float32)
        batch_size = real.shape[0]
        _, world = rank_world()
        step, nimg = self._counters()
        logs: dict[str, Any] = {}  # tensors, not floats: reading each one back would stall the GPU
        ok = True
        # the running statistics the phases update: a skipped phase must not leave them non-finite
        w_avg = getattr(self.G.mapping, "w_avg", None)
        guarded = [(b, b.detach().clone()) for b in (self.pl_mean, w_avg) if b is not None]
        with self.randomness.step(step, real.device):
            ok &= self._phase_gmain(batch_size, logs)
            if reg.pl_weight > 0 and step % max(reg.pl_interval, 1) == 0:
                ok &= self._phase_greg(batch_size, logs)
            ok &= self._phase_dmain(real, batch_size, logs)
            if reg.r1_gamma > 0 and step % max(reg.r1_interval, 1) == 0:
                ok &= self._phase_dreg(real, logs)
        self._real_c = None
        for buffer, before in guarded:  # no host sync
            buffer.copy_(torch.where(torch.isfinite(buffer), buffer, before))

        if world > 1:  # keep running statistics identical on every rank
            self.G.mapping.w_avg.copy_(self._rank_mean(self.G.mapping.w_avg))
        self._update_ema(batch_size * world, nimg)  # NVIDIA's ramp-up reads cur_nimg before this batch
        nimg += batch_size * world
        step += 1
        self._host_counters = (step, nimg)
        self.cur_nimg.fill_(nimg)
        self.step_idx.fill_(step)
        if isinstance(ok, torch.Tensor):  # sync_free: the streak on the device, read when the logs are
            self.bad_streak.copy_(torch.where(ok, 0, self.bad_streak + 1))
            self.worst_streak.copy_(torch.maximum(self.worst_streak, self.bad_streak))
        else:
            self._bad_streak = 0 if ok else self._bad_streak + 1
            self.bad_streak.fill_(self._bad_streak)
        if self._bad_streak >= self.guard.max_bad_steps:
            self._stop_on_nonfinite()
        if self.ada is not None:  # ADA: move p every ada_interval D steps (all-reduced: same p on every rank)
            logs.update(self.ada.update(self.augment_pipe, batch_size * world, self._rank_mean))
        self._log_step(logs, batch_size, real.device)
        if self.finished():
            self.trainer.should_stop = True

    def _log_step(self, logs: dict[str, Any], batch_size: int, device: torch.device) -> None:
        """Hand the step's values to Lightning's loggers on the steps they write (``log_every_n_steps``)
        and at the end; on other steps Lightning would discard them, after paying for them."""
        self.last_step_logs = logs  # tensors; the progress display reads a few of them now and then
        now = time.perf_counter()
        if self._last_step_time is not None:
            logs["Timing/img_per_s"] = batch_size * rank_world()[1] / max(now - self._last_step_time, 1e-9)
        self._last_step_time = now
        step, nimg = self._counters()
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        if step % max(every, 1) != 0 and not self.finished():
            return
        if device.type == "cuda":
            logs["Resources/peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        logs["Progress/nonfinite_frac"] = self.bad_phases.double() / self.total_phases.clamp(min=1).double()
        logs["Loss/pl_mean"] = self.pl_mean.detach().clone()
        if self.orth is not None:
            logs.update(self.orth.logs(self.G, step - 1))
        if self.speed.sync_free and int(self.worst_streak) >= self.guard.max_bad_steps:  # read with the logs
            self._stop_on_nonfinite()
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("kimg", nimg / 1000, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)

    @torch.no_grad()
    def _update_ema(self, global_batch: int, cur_nimg: int) -> None:
        """G_ema <- lerp(G, G_ema, beta) with StyleGAN's half-life ``ema_kimg`` (two foreach kernels, the
        same arithmetic as NVIDIA's per-parameter ``p.lerp(p_ema, beta)``); buffers are copied."""
        ema_nimg = self.ema.kimg * 1000
        if self.ema.rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * self.ema.rampup)
        beta = 0.5 ** (global_batch / max(ema_nimg, 1e-8))
        if self.orth is not None:  # only what trains; both bases stay as loaded
            pairs = list(self.orth.ema_pairs(self.G, self.G_ema))
        else:
            pairs = list(zip(self.G_ema.parameters(), self.G.parameters(), strict=True))
        if pairs:
            ema, live = [e for e, _ in pairs], [p.detach() for _, p in pairs]
            torch._foreach_copy_(ema, torch._foreach_lerp(live, ema, beta))
        ema_buffers, buffers = list(self.G_ema.buffers()), list(self.G.buffers())
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, buffers)

    def _save_last_good(self) -> str:
        """Write ``network-lastgood.safetensors``: the current weights when G_ema's output is finite (no bad
        update reached them), else a copy of the newest snapshot whose G_ema output is (weights can be
        finite and still overflow); one sentence on what was saved."""
        folder = self._run_dir or Path(self.trainer.default_root_dir)
        path = folder / "network-lastgood.safetensors"
        folder.mkdir(parents=True, exist_ok=True)
        if finite_output(self.G_ema):
            save_network(path, **self.export_networks(), meta=self.provenance())
            return f" The last good weights (no bad update was applied) are in {path}."
        for snapshot in sorted(folder.glob("network-snapshot-*[0-9].safetensors"), reverse=True):
            G_ema = load_network(snapshot)["G_ema"]
            if G_ema is not None and finite_output(G_ema):
                with atomic_open(path, "wb") as fh:
                    fh.write(snapshot.read_bytes())
                return (
                    f" The weights give a non-finite image; {path} is {snapshot.name}, the last finite one."
                )
        return " No weights of this run give a finite image (none saved)."

    def _stop_on_nonfinite(self) -> None:
        saved = self._save_last_good() if self.global_rank == 0 and self._trainer is not None else ""
        streak = max(int(self.bad_streak), int(self.worst_streak))
        raise NonFiniteTrainingError(
            f"{streak} consecutive training steps had a non-finite loss or gradient (at kimg "
            f"{self.cur_kimg:.1f}; {int(self.bad_phases)} of {int(self.total_phases)} phases so far).{saved} "
            f"Try a lower learning rate, a larger R1 gamma, a larger root k (loss {self.adv_loss.label}), or "
            f"precision 32; model.guard.max_bad_steps={self.guard.max_bad_steps} sets the patience."
        )

    def on_train_start(self) -> None:
        opt_g, opt_d = self.trainer.optimizers
        # the settings given now, also on resume (where the optimizer states come from the checkpoint)
        for opt, which in ((opt_g, "G"), (opt_d, "D")):
            for group in opt.param_groups:
                group.update(group_settings(*self._optimizer_settings(which)))
        if self.logger is not None:
            self.logger.log_hyperparams({"optimizer/G": describe(opt_g), "optimizer/D": describe(opt_d)})
        # trainer.log_dir is a collective under DDP: resolve it on every rank now, not on rank 0 later.
        self._run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if isinstance(self.randomness, SeededRandomness):
            self.randomness.rank = rank_world()[0]
        self._host_counters = None
        if self.speed.tf32 is not None:  # TF32 for fp32 matmuls and convolutions (NVIDIA's loop: off)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.speed.tf32

    def on_train_end(self) -> None:
        self.check_ddp_consistency()
        bad, total = int(self.bad_phases), int(self.total_phases)
        if total and bad / total > self.guard.max_bad_fraction:
            raise NonFiniteTrainingError(
                f"the run diverged: {bad} of {total} phases ({100 * bad / total:.0f}%) had a non-finite "
                f"loss or gradient and were skipped (more than model.guard.max_bad_fraction="
                f"{self.guard.max_bad_fraction:g}). Its snapshots are kept, but do not trust them; try a "
                f"lower learning rate, a larger R1 gamma, a larger root k (loss {self.adv_loss.label}) or "
                "precision 32."
            )

    @torch.no_grad()
    def check_ddp_consistency(self) -> list[float] | None:
        """Under several ranks, compare a checksum of all weights and buffers across ranks; rank 0
        writes ``ddp_consistency.json`` in the run dir. Raises if the ranks have diverged."""
        rank, world = rank_world()
        if world == 1:
            return None
        tensors = [
            t.detach().double().sum() + t.detach().double().abs().sum() for t in self.state_dict().values()
        ]
        local = torch.stack(tensors).sum().reshape(1).to(self.device)
        gathered = [torch.zeros_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        sums = [float(t) for t in gathered]
        if rank == 0 and self._trainer is not None:
            out = self._run_dir or Path(self.trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            record = {"world_size": world, "checksums": sums, "step": int(self.step_idx)}
            (out / "ddp_consistency.json").write_text(json.dumps(record, indent=2))
        if any(v != sums[0] for v in sums):
            raise RuntimeError(f"ranks diverged: weight checksums {sums}")
        return sums

    def provenance(self) -> dict[str, Any]:
        """What a snapshot records about its origin."""
        return {
            "finetuned_from": self.source_meta.get("source"),
            "source_format": self.source_meta.get("format"),
            "loss": self.adv_loss.label,
            "kimg": round(self.cur_kimg, 3),
            "augment_p": getattr(self.augment_pipe, "p_value", None),  # ADA's p at this point (None: no ADA)
            "hparams": {k: v for k, v in dict(self.hparams).items() if k not in ("g_kwargs", "d_kwargs")},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rootedgan_phase_counts"] = dict(self.phase_counts)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resume_state(checkpoint, self, [self.g_params(), self.d_params()])
        self.phase_counts.update(checkpoint.get("rootedgan_phase_counts", {}))
        self._host_counters = None  # the buffers are about to change: read them again
