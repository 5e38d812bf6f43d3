"""The finetuning LightningModule: StyleGAN2's training step with a pluggable adversarial loss.

One training step (one real batch) runs NVIDIA's phases with manual optimization:

* ``Gmain``: G minimises ``phi(-D(G(z)))`` (style mixing with probability ``style_mixing_prob``);
* ``Greg``: path-length regularization every ``pl_interval`` steps on ``batch / pl_batch_shrink`` samples;
* ``Dmain``: D minimises ``phi(D(G(z))) + phi(-D(x))``; every ``r1_interval`` steps R1 is added on the
  same real forward (``Dmain+Dreg``), weighted ``gamma / 2 * interval``;

then G_ema follows G with StyleGAN's ``ema_kimg`` half-life (``ema_rampup`` optional). Progress is
counted in images like NVIDIA's (``cur_nimg``, kimg). A phase whose loss or gradient is not finite is
skipped (weights untouched) and counted; ``max_bad_steps`` consecutive bad steps stop training with a
clear error after saving the (still good) weights. Gradients of each phase are all-reduced by the module
itself under the ``gan_ddp`` strategy (see :mod:`rootedgan.strategy`).

All randomness of a step (latents, mixing, noise inputs, path-length probes) is drawn inside
``fork_rng`` seeded from ``(seed, rank, step)``, so resuming from a checkpoint reproduces the run exactly.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from rootedgan.augment import build_augment
from rootedgan.errors import UserError
from rootedgan.losses import (
    DEFAULT_MAX_GRAD,
    AdversarialLoss,
    path_length,
    path_length_penalty,
    r1_penalty,
)
from rootedgan.optim import OPTIMIZERS, build_optimizer, describe
from rootedgan.orthogonal import OrthogonalConfig, OrthogonalFinetune


class NonFiniteTrainingError(UserError, RuntimeError):
    """Training produced non-finite losses or gradients for too many consecutive steps."""


def dist_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def d_layers_from_input(D: nn.Module) -> list[nn.Module]:
    """D's layers in NVIDIA's ``freeze_layers`` order: per block from the input side, fromrgb, conv0,
    conv1, skip."""
    layers = []
    for res in D.block_resolutions:
        block = getattr(D, f"b{res}")
        layers += [getattr(block, n) for n in ("fromrgb", "conv0", "conv1", "skip") if hasattr(block, n)]
    return layers


class FinetuneModule(L.LightningModule):
    """Finetune (or train) a StyleGAN2 with the rooted or logistic objective."""

    def __init__(
        self,
        network: str | None = None,
        g_kwargs: dict | None = None,
        d_kwargs: dict | None = None,
        loss: str = "rooted",
        k: float = 2.0,
        subtract_k: bool = False,
        max_grad: float | None = DEFAULT_MAX_GRAD,
        g_lr: float = 0.002,
        d_lr: float = 0.002,
        betas: tuple[float, float] = (0.0, 0.99),
        g_optimizer: str = "adam",
        d_optimizer: str = "adam",
        r1_gamma: float = 10.0,
        r1_interval: int = 16,
        pl_weight: float = 2.0,
        pl_interval: int = 4,
        pl_decay: float = 0.01,
        pl_batch_shrink: int = 2,
        style_mixing_prob: float = 0.9,
        ema_kimg: float = 10.0,
        ema_rampup: float | None = None,
        freeze_d: int = 0,
        augment: str = "none",
        augment_p: float = 0.0,
        augment_preset: str = "bgc",
        ada_target: float = 0.6,
        ada_interval: int = 4,
        ada_kimg: float = 500.0,
        diffaugment_policy: str = "color,translation,cutout",
        total_kimg: float = 1000.0,
        max_bad_steps: int = 10,
        seed: int = 0,
        mode: str = "full",
        orthogonal: OrthogonalConfig | None = None,
    ) -> None:
        """
        Args:
            network: pretrained network to start from: path, URL or shortcut (NVIDIA .pkl, rosinality .pt,
                rootedgan .safetensors). None trains from scratch with ``g_kwargs``/``d_kwargs``.
            g_kwargs: Generator constructor arguments (NVIDIA's) when training from scratch.
            d_kwargs: Discriminator constructor arguments when training from scratch.
            loss: adversarial loss, ``rooted`` or ``logistic`` (``rooted:K`` sets the root too).
            k: root of the rooted loss (> 1).
            subtract_k: subtract k from rooted loss values (same gradients; values comparable to softplus).
            max_grad: slope at which the rooted loss continues linearly (keeps huge logits finite).
            g_lr: generator learning rate (Adam).
            d_lr: discriminator learning rate (Adam).
            betas: Adam betas.
            g_optimizer: ``adam`` (StyleGAN's) or ``golden`` (golden-ratio SGD preset, rootedgan.optim).
            d_optimizer: ``adam`` or ``golden`` for D.
            r1_gamma: R1 weight gamma (0 disables R1).
            r1_interval: lazy R1 interval in steps (0 = every step).
            pl_weight: path-length regularization weight (0 disables it).
            pl_interval: lazy path-length interval in steps.
            pl_decay: decay of the running path-length mean.
            pl_batch_shrink: path length runs on batch // pl_batch_shrink samples.
            style_mixing_prob: probability of style mixing per batch.
            ema_kimg: half-life of G_ema in thousands of images.
            ema_rampup: ramp the EMA half-life up to ema_kimg over ``ema_rampup * cur_nimg`` (None: off).
            freeze_d: freeze the first N layers of D from the input side (FreezeD).
            augment: what D sees (reals and fakes, R1 included), see :mod:`rootedgan.augment`: ``none``,
                ``ada`` (ADA pipeline, p adapted), ``fixed`` (ADA pipeline at constant ``augment_p``) or
                ``diffaugment``.
            augment_p: initial (``ada``) or constant (``fixed``) probability p of each transform, in [0, 1).
            augment_preset: ADA transforms: ``bgc`` (blit, geometry, colour), ``bg``, ``bgcf``, ``bgcfn``,
                ``bgcfnc``, or a comma-separated list of transform names.
            ada_target: ADA's target for ``E[sign(D(real))]`` (NVIDIA: 0.6).
            ada_interval: adjust p every this many D steps.
            ada_kimg: thousands of images for p to move by 1 (NVIDIA: 500; 100 is customary when finetuning).
            diffaugment_policy: DiffAugment transforms, a comma-separated subset of color,translation,cutout.
            total_kimg: stop after this many thousand real images.
            max_bad_steps: stop after this many consecutive steps with a non-finite loss or gradient.
            seed: seed for latents and noise (each rank and step derives its own).
            mode: ``full`` (every G parameter trains) or ``orthogonal`` (OFT: G's selected weights are frozen
                and rotated by learned block-diagonal orthogonal matrices; see :mod:`rootedgan.orthogonal`).
            orthogonal: settings of orthogonal mode (layers, block_size, shared, parameterization, eps, ...);
                None: the defaults. Ignored in full mode.
        """
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        try:
            self.adv_loss = AdversarialLoss.parse(
                loss, **({} if ":" in loss else {"k": k}), subtract_k=subtract_k, max_grad=max_grad
            )
        except ValueError as err:
            raise UserError(f"model.loss / model.k: {err}") from None
        self.G, self.D, self.G_ema, self.source_meta = self._build_networks(network, g_kwargs, d_kwargs)
        self.G.train()
        self.D.train()
        self.G_ema.requires_grad_(False)
        self.orth = self._setup_orthogonal(mode, orthogonal, network)
        self.d_frozen = self._freeze_d_layers(freeze_d)
        for which in ("g_optimizer", "d_optimizer"):
            if self.hparams[which] not in OPTIMIZERS:
                raise UserError(
                    f"model.{which} must be one of {', '.join(OPTIMIZERS)}, got {self.hparams[which]!r}"
                )
        minimums = dict(r1_interval=0, pl_interval=0, pl_batch_shrink=1, max_bad_steps=1)
        for name, minimum in minimums.items():
            if self.hparams[name] < minimum:
                raise UserError(f"model.{name} must be >= {minimum}, got {self.hparams[name]}")
        self.register_buffer("pl_mean", torch.zeros([]))
        self.register_buffer("cur_nimg", torch.zeros([], dtype=torch.long))
        self.register_buffer("step_idx", torch.zeros([], dtype=torch.long))
        self.register_buffer("bad_phases", torch.zeros([], dtype=torch.long))
        self.register_buffer("total_phases", torch.zeros([], dtype=torch.long))
        self.register_buffer("bad_streak", torch.zeros([], dtype=torch.long))
        self.phase_counts: dict[str, int] = {"Gmain": 0, "Greg": 0, "Dmain": 0, "Dreg": 0}
        self.augment_pipe, self.ada = build_augment(  # (None, None) for augment: none
            augment, augment_p, augment_preset, diffaugment_policy, ada_target, ada_interval, ada_kimg
        )
        self._last_step_time: float | None = None
        self._run_dir: Path | None = None

    # -- set-up -----------------------------------------------------------------------------------

    @staticmethod
    def _build_networks(
        network: str | None, g_kwargs: dict | None, d_kwargs: dict | None
    ) -> tuple[nn.Module, nn.Module, nn.Module, dict]:
        if network is not None:
            from rootedgan.checkpoints import load_network

            nets = load_network(network)
            G, D = nets.get("G"), nets.get("D")
            G_ema = nets.get("G_ema")
            if D is None:
                raise UserError(
                    f"{network} holds no discriminator: finetuning needs one (NVIDIA pickles and "
                    "rosinality checkpoints have it; a G-only export does not)"
                )
            if G is None:
                G = copy.deepcopy(G_ema)
            if G_ema is None:
                G_ema = copy.deepcopy(G)
            meta = dict(nets.get("meta") or {})
            meta.setdefault("source", network)
            return G, D, G_ema.eval(), meta
        if not g_kwargs or not d_kwargs:
            raise UserError(
                "set model.network (a pretrained checkpoint) or both model.g_kwargs and model.d_kwargs"
            )
        from rootedgan.networks import Discriminator, Generator

        G = Generator(**g_kwargs)
        D = Discriminator(**d_kwargs)
        return G, D, copy.deepcopy(G).eval(), {"source": None}

    def _freeze_d_layers(self, count: int) -> set[str]:
        layers = d_layers_from_input(self.D)
        if not 0 <= count <= len(layers):
            raise UserError(
                f"model.freeze_d must be in [0, {len(layers)}] for this discriminator, got {count}"
            )
        frozen = set()
        ids = {id(p) for layer in layers[:count] for p in layer.parameters()}
        for name, p in self.D.named_parameters():
            if id(p) in ids:
                p.requires_grad_(False)
                frozen.add(name)
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
        return float(self.cur_nimg) / 1000

    def train(self, mode: bool = True) -> FinetuneModule:
        super().train(mode)
        self.G_ema.eval()  # G_ema is never trained; keeps its w_avg out of training-mode updates
        return self

    def _setup_orthogonal(
        self, mode: str, orthogonal: OrthogonalConfig | dict | None, network: str | None
    ) -> OrthogonalFinetune | None:
        if mode not in ("full", "orthogonal"):
            raise UserError(f"model.mode must be full or orthogonal, got {mode!r}")
        wanted = orthogonal is not None or mode == "orthogonal"
        cfg = OrthogonalConfig.from_any(orthogonal) if wanted else None
        if cfg is not None:  # a plain dict: Lightning checkpoints are read back with weights_only=True
            self.hparams["orthogonal"] = cfg.to_dict()
            if hasattr(self, "_hparams_initial"):
                self._hparams_initial["orthogonal"] = cfg.to_dict()
        if mode == "full":
            return None
        return OrthogonalFinetune(cfg, self.G, self.G_ema, network)

    def g_params(self) -> list[nn.Parameter]:
        if self.orth is not None:  # the rotations (+ magnitudes, train_extra); the base stays frozen
            return self.orth.parameters(self.G)
        return list(self.G.parameters())

    def _g_requires_grad(self, flag: bool) -> None:
        if self.orth is not None:
            self.orth.set_requires_grad(self.G, flag)
        else:
            self.G.requires_grad_(flag)

    def export_networks(self) -> dict[str, nn.Module]:
        """G, D, G_ema as plain networks for ``save_network`` (orthogonal mode: merged copies)."""
        if self.orth is not None:
            return self.orth.export(self.G, self.D, self.G_ema)
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def save_adapter(self, path: str | Path) -> Path | None:
        """Orthogonal mode with a pretrained base: write the adapter file (rotations of G and G_ema and a
        reference to the base checkpoint) and return its path; otherwise None."""
        if self.orth is None:
            return None
        return self.orth.save_adapter(path, self.G, self.G_ema, meta=self.provenance())

    def d_params(self) -> list[nn.Parameter]:
        return [p for n, p in self.D.named_parameters() if n not in self.d_frozen]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        g_interval = hp.pl_interval if hp.pl_weight > 0 else 0
        d_interval = hp.r1_interval if hp.r1_gamma > 0 else 0
        opt_g = build_optimizer(hp.g_optimizer, self.g_params(), hp.g_lr, tuple(hp.betas), g_interval)
        opt_d = build_optimizer(hp.d_optimizer, self.d_params(), hp.d_lr, tuple(hp.betas), d_interval)
        if self.orth is not None and self.orth.cfg.eps is not None:  # COFT: project after every G step
            opt_g.register_step_post_hook(lambda *_: self.orth.project_(self.G))
        return [opt_g, opt_d]

    def setup(self, stage: str) -> None:
        from lightning.pytorch.strategies import DDPStrategy

        from rootedgan.strategy import GANDDPStrategy

        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, GANDDPStrategy):
            raise UserError(
                "rootedgan synchronises GAN gradients itself: use trainer.strategy: gan_ddp for several "
                f"devices (got {type(strategy).__name__})"
            )

    # -- one step ---------------------------------------------------------------------------------

    def _step_seed(self) -> int:
        rank, _ = dist_world()
        return (int(self.hparams.seed) * 1_000_003 + rank * 7_919 + int(self.step_idx)) % (2**63 - 1)

    def _augment(self, img: torch.Tensor) -> torch.Tensor:
        return self.augment_pipe(img) if self.augment_pipe is not None else img

    def _sample_ws(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Mapping with style mixing: past a random cutoff, ws come from a second latent."""
        ws = self.G.mapping(z, c)
        if self.hparams.style_mixing_prob > 0 and ws.shape[1] > 1:
            if float(torch.rand([])) < self.hparams.style_mixing_prob:
                cutoff = int(torch.randint(1, ws.shape[1], []))
                mixed = self.G.mapping(torch.randn_like(z), c, skip_w_avg_update=True)
                ws = torch.cat([ws[:, :cutoff], mixed[:, cutoff:]], dim=1)
        return ws

    @staticmethod
    def _rank_mean(value: torch.Tensor) -> torch.Tensor:
        """Mean of ``value`` over all ranks (itself when not distributed)."""
        _, world = dist_world()
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

    def _finish_phase(self, name: str, loss: torch.Tensor, params: list[nn.Parameter], opt: Any) -> bool:
        """All-reduce the phase's gradients across ranks, then step only if loss and grads are finite."""
        self.manual_backward(loss)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flag = (~torch.isfinite(loss.detach())).float().reshape(1)
        _, world = dist_world()
        if world > 1:  # same gradients, and so the same decision, on every rank
            flat = torch.cat([g.flatten() for g in grads] + [flag])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for p, g in zip(params, grads, strict=True):
                p.grad = flat[offset : offset + g.numel()].view_as(p)
                offset += g.numel()
            loss_ok = float(flat[-1]) == 0
            grads_ok = bool(torch.isfinite(flat).all())
        else:
            loss_ok = float(flag[0]) == 0
            grads_ok = bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True
        self.total_phases += 1
        self.phase_counts[name] += 1
        if self._grad_scaler() is not None:
            # fp16 loss scaling: inf gradients are expected while the scale is searched. The scaler
            # skips those steps and lowers the scale itself (opt.step() must run for that), so only a
            # non-finite loss counts as a bad step here.
            finite = loss_ok
            opt.step()
        else:
            finite = loss_ok and grads_ok
            if finite:
                opt.step()
        if not finite:
            self.bad_phases += 1
        opt.zero_grad(set_to_none=True)
        return finite

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real_u8, real_c = batch
        real = real_u8.to(torch.float32) / 127.5 - 1
        batch_size = real.shape[0]
        _, world = dist_world()
        hp = self.hparams
        step = int(self.step_idx)
        do_pl = hp.pl_weight > 0 and step % max(hp.pl_interval, 1) == 0
        do_r1 = hp.r1_gamma > 0 and step % max(hp.r1_interval, 1) == 0
        # Tensors, not floats: converting each one would stall the GPU; Lightning reads them when it logs.
        logs: dict[str, torch.Tensor | float] = {}
        all_finite = True
        devices = [real.device] if real.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._step_seed())
            gen_c = real_c[torch.randperm(batch_size, device=real_c.device)] if self.c_dim > 0 else real_c

            # Gmain
            self._g_requires_grad(True)
            self.D.requires_grad_(False)
            z = torch.randn([batch_size, self.G.z_dim], device=self.device)
            fake = self.G.synthesis(self._sample_ws(z, gen_c))
            fake_logits = self.D(self._augment(fake), gen_c)
            loss_g = self.adv_loss.generator(fake_logits).mean()
            all_finite &= self._finish_phase("Gmain", loss_g, self.g_params(), opt_g)
            logs["Loss/G/loss"] = loss_g.detach()
            logs["Loss/scores/fake"] = fake_logits.detach().mean()
            logs["Loss/rooted_capped_frac"] = self.adv_loss.capped(-fake_logits)

            # Greg: path length on a shrunk batch
            if do_pl:
                n = max(batch_size // hp.pl_batch_shrink, 1)
                ws = self._sample_ws(torch.randn([n, self.G.z_dim], device=self.device), gen_c[:n])
                if not ws.requires_grad:  # frozen mapping (orthogonal mode): the penalty needs d img / d ws
                    ws.requires_grad_(True)
                img = self.G.synthesis(ws)
                lengths = path_length(img, ws)
                penalty, new_mean = path_length_penalty(
                    lengths, self.pl_mean, hp.pl_decay, batch_mean=self._rank_mean(lengths.detach().mean())
                )
                self.pl_mean.copy_(new_mean.detach())
                loss_pl = penalty.mean() * hp.pl_weight * max(hp.pl_interval, 1)
                all_finite &= self._finish_phase("Greg", loss_pl, self.g_params(), opt_g)
                logs["Loss/pl_penalty"] = penalty.detach().mean()

            # Dmain (+ R1 on the same real forward when due)
            self._g_requires_grad(False)
            for name, p in self.D.named_parameters():
                p.requires_grad_(name not in self.d_frozen)
            with torch.no_grad():
                z = torch.randn([batch_size, self.G.z_dim], device=self.device)
                fake = self.G.synthesis(self._sample_ws(z, gen_c))
            fake_logits = self.D(self._augment(fake), gen_c)
            real_in = real.detach().requires_grad_(do_r1)
            real_logits = self.D(self._augment(real_in), real_c)
            if self.ada is not None:  # ADA's overfitting statistic, sign(D(real))
                self.ada.observe(real_logits)
            loss_d_fake = self.adv_loss.discriminator_fake(fake_logits)
            loss_d_real = self.adv_loss.discriminator_real(real_logits)
            loss_d = (loss_d_fake + loss_d_real).mean()
            if do_r1:
                r1 = r1_penalty(real_in, real_logits)
                loss_d = loss_d + (r1 * (hp.r1_gamma / 2) * max(hp.r1_interval, 1)).mean()
                logs["Loss/r1_penalty"] = r1.detach().mean()
                self.phase_counts["Dreg"] += 1
            all_finite &= self._finish_phase("Dmain", loss_d, self.d_params(), opt_d)
            self._g_requires_grad(True)
            logs["Loss/D/loss"] = loss_d.detach()
            logs["Loss/scores/real"] = real_logits.detach().mean()

        if world > 1:  # keep running statistics identical on every rank
            self.G.mapping.w_avg.copy_(self._rank_mean(self.G.mapping.w_avg))
        self.cur_nimg += batch_size * world
        self.step_idx += 1
        self._update_ema(batch_size * world)
        self.bad_streak.copy_(torch.zeros_like(self.bad_streak) if all_finite else self.bad_streak + 1)
        if int(self.bad_streak) >= hp.max_bad_steps:
            self._stop_on_nonfinite()

        now = time.perf_counter()
        if self._last_step_time is not None:
            logs["Timing/img_per_s"] = batch_size * world / max(now - self._last_step_time, 1e-9)
        self._last_step_time = now
        if real.device.type == "cuda":
            logs["Resources/peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(real.device) / 2**30
        logs["Progress/nonfinite_frac"] = self.bad_phases.double() / self.total_phases.clamp(min=1).double()
        logs["Loss/pl_mean"] = self.pl_mean.detach().clone()
        if self.ada is not None:  # ADA: move p every ada_interval D steps (all-reduced: same p on every rank)
            logs.update(self.ada.update(self.augment_pipe, batch_size * world, self._rank_mean))
        if self.orth is not None:
            logs.update(self.orth.logs(self.G, step))
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("kimg", self.cur_kimg, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        if self.cur_kimg >= hp.total_kimg:
            self.trainer.should_stop = True

    @torch.no_grad()
    def _update_ema(self, global_batch: int) -> None:
        hp = self.hparams
        ema_nimg = hp.ema_kimg * 1000
        if hp.ema_rampup is not None:
            ema_nimg = min(ema_nimg, float(self.cur_nimg) * hp.ema_rampup)
        beta = 0.5 ** (global_batch / max(ema_nimg, 1e-8))
        if self.orth is not None:  # only what trains; both bases stay as loaded
            pairs = self.orth.ema_pairs(self.G, self.G_ema)
        else:
            pairs = zip(self.G_ema.parameters(), self.G.parameters(), strict=True)
        for p_ema, p in pairs:
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    def _stop_on_nonfinite(self) -> None:
        hp = self.hparams
        saved = ""
        if self.global_rank == 0 and self._trainer is not None:
            from rootedgan.checkpoints import save_network

            path = (self._run_dir or Path(self.trainer.default_root_dir)) / "network-lastgood.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_network(path, **self.export_networks(), meta=self.provenance())
            saved = f" The last good weights (no bad update was applied) are in {path}."
        raise NonFiniteTrainingError(
            f"{int(self.bad_streak)} consecutive training steps had a non-finite loss or gradient (at kimg "
            f"{self.cur_kimg:.1f}; {int(self.bad_phases)} of {int(self.total_phases)} phases so far).{saved} "
            f"Try a lower learning rate, a larger R1 gamma, a larger root k (loss {self.adv_loss.label}), or "
            f"precision 32; model.max_bad_steps={hp.max_bad_steps} sets the patience."
        )

    def on_train_start(self) -> None:
        if self.logger is not None:
            opt_g, opt_d = self.trainer.optimizers
            self.logger.log_hyperparams({"optimizer/G": describe(opt_g), "optimizer/D": describe(opt_d)})
        # trainer.log_dir is a collective under DDP: resolve it on every rank now, not on rank 0 later.
        self._run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def on_train_end(self) -> None:
        self.check_ddp_consistency()

    @torch.no_grad()
    def check_ddp_consistency(self) -> list[float] | None:
        """Under several ranks, compare a checksum of all weights and buffers across ranks; rank 0
        writes ``ddp_consistency.json`` in the run dir. Raises if the ranks have diverged."""
        rank, world = dist_world()
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
            import json

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
        self.phase_counts.update(checkpoint.get("rootedgan_phase_counts", {}))
