"""What one training step means for each kind of model: classification, reconstruction
(autoencoders, VAE), adversarial (GAN, LSGAN, DCGAN, WGAN-GP) and feed-forward style
transfer (a transformer network scored by a perceptual loss).

A task owns its model and optimisers; :mod:`trainers.loop` owns devices, data, AMP, DDP,
logging and checkpoints and calls ``task.step`` and ``task.evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierTask", "GanTask", "ReconstructionTask", "StyleTask", "Task"]


class Task:
    """Base class. ``monitor``/``mode``: the validation metric that picks ``best``
    (``mode="max"`` or ``"min"``); ``monitor=None``: ``best`` is the last epoch."""

    monitor: str | None = "val_loss"
    mode = "min"

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0,
                 optimizer: str = "adamw"):
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        self.wrap: Callable[[nn.Module], nn.Module] = lambda m: m  # DDP wrapper, set by loop

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [_optimizer(self.optimizer_name, params, self.lr, self.weight_decay)]

    def prepare(self) -> None:
        """Called once the model is on its device: wraps modules (DDP) for training."""
        self.train_model = self.wrap(self.model)

    def step(self, x: torch.Tensor, y: torch.Tensor, optimizers, backward,
             autocast) -> dict[str, torch.Tensor]:
        """One optimisation step; forward passes run under ``autocast()``, ``backward(loss,
        optimizer)`` outside it (as torch.amp recommends). Returns the step's values
        (``loss`` and any parts) as detached 0-dim tensors on the device: reading them
        would make the host wait for the GPU, so the loop does that once per epoch.
        ``backward`` may be called at most once per optimiser: the loop updates the fp16
        gradient scaler once per iteration, after every optimiser stepped."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, loader, device, autocast) -> dict[str, float]:
        raise NotImplementedError

    def samples(self, batch: torch.Tensor) -> torch.Tensor | None:
        """A grid-ready batch of images in [0, 1] to save after each epoch, or None."""
        return None


def _total(device: torch.device) -> torch.Tensor:
    """A 0 to add a validation set's losses to on ``device`` (float64, but float32 on MPS,
    which has no float64)."""
    dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
    return torch.zeros((), device=device, dtype=dtype)


def _optimizer(name: str, params, lr: float, weight_decay: float,
               betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay,
                               nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)


class ClassifierTask(Task):
    """Cross-entropy classification; validation reports ``val_loss`` and ``val_acc``."""

    monitor = "val_acc"
    mode = "max"

    def step(self, x, y, optimizers, backward, autocast):
        with autocast():
            logits = self.train_model(x)
        loss = F.cross_entropy(logits.float(), y)
        backward(loss, optimizers[0])
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, loader, device, autocast):
        self.model.eval()
        loss_sum = _total(device)
        correct, count = torch.zeros((), device=device, dtype=torch.long), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with autocast():
                logits = self.model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
        return {"val_loss": float(loss_sum) / count, "val_acc": int(correct) / count}


class ReconstructionTask(Task):
    """Autoencoders (``loss`` = ``bce`` or ``mse``, per image) and the VAE (``vae``: BCE+KL).

    Images are expected in [0, 1] (the recipes use mean 0, std 1)."""

    def __init__(self, model, lr, weight_decay=0.0, optimizer="adam", loss: str = "bce"):
        super().__init__(model, lr, weight_decay, optimizer)
        self.loss_name = loss

    def _loss(self, net: nn.Module, x: torch.Tensor, autocast) -> torch.Tensor:
        with autocast():  # the forward pass only: BCE is not autocast-safe in fp16
            recon = net(x)
        if self.loss_name == "vae":
            return self.model.loss(x, recon.float())
        fn = F.binary_cross_entropy if self.loss_name == "bce" else F.mse_loss
        return fn(recon.float(), x, reduction="sum") / len(x)

    def step(self, x, y, optimizers, backward, autocast):
        loss = self._loss(self.train_model, x, autocast)
        backward(loss, optimizers[0])
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, loader, device, autocast):
        self.model.eval()
        total, count = _total(device), 0
        for x, _ in loader:
            x = x.to(device)
            total += self._loss(self.model, x, autocast) * len(x)
            count += len(x)
        return {"val_loss": float(total) / count}

    @torch.no_grad()
    def samples(self, batch):
        self.model.eval()
        return torch.cat([batch[:8], self.model(batch[:8]).float()]).clamp(0, 1)


class GanTask(Task):
    """Adversarial training of ``model.generator`` against ``model.discriminator``.

    ``loss``: ``bce`` (the original GAN, non-saturating generator loss), ``lsgan`` (least
    squares) or ``wgan-gp`` (Wasserstein critic with gradient penalty, ``n_critic`` critic
    steps per generator step). Validation reports the discriminator's loss on held-out
    real images against fresh fakes as ``val_loss``. That loss says how well the
    discriminator does, not how good the samples are (it is lowest while the generator is
    still poor), so ``best`` is the last epoch.
    """

    monitor = None

    def __init__(self, model, lr, weight_decay=0.0, optimizer="adam", loss: str = "bce",
                 n_critic: int = 1, gp_weight: float = 10.0):
        super().__init__(model, lr, weight_decay, optimizer)
        self.loss_name = loss
        self.n_critic = n_critic
        self.gp_weight = gp_weight
        self.fixed_z = torch.randn(64, model.z_dim, 1, 1,
                                   generator=torch.Generator().manual_seed(1234))

    def build_optimizers(self):
        betas = (0.0, 0.9) if self.loss_name == "wgan-gp" else (0.5, 0.999)
        return [_optimizer("adam", self.model.generator.parameters(), self.lr, 0.0, betas),
                _optimizer("adam", self.model.discriminator.parameters(), self.lr, 0.0, betas)]

    def prepare(self):
        self.generator = self.wrap(self.model.generator)
        self.discriminator = self.wrap(self.model.discriminator)

    def _d_loss(self, real_logits, fake_logits):
        if self.loss_name == "lsgan":
            return 0.5 * ((real_logits - 1).pow(2).mean() + fake_logits.pow(2).mean())
        if self.loss_name == "wgan-gp":
            return fake_logits.mean() - real_logits.mean()
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))

    def _g_loss(self, fake_logits):
        if self.loss_name == "lsgan":
            return 0.5 * (fake_logits - 1).pow(2).mean()
        if self.loss_name == "wgan-gp":
            return -fake_logits.mean()
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def _penalty(self, real, fake):
        alpha = torch.rand(len(real), 1, 1, 1, device=real.device)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def step(self, x, y, optimizers, backward, autocast):
        opt_g, opt_d = optimizers
        z = torch.randn(len(x), self.model.z_dim, 1, 1, device=x.device)
        with autocast():
            fake = self.generator(z)
            d_loss = self._d_loss(self.discriminator(x).float(),
                                  self.discriminator(fake.detach()).float())
        if self.loss_name == "wgan-gp":  # the penalty's double backward runs in fp32
            d_loss = d_loss + self.gp_weight * self._penalty(x, fake.detach().float())
        backward(d_loss, opt_d)
        out = {"loss": d_loss.detach(), "d_loss": d_loss.detach()}
        # The critic's step count lives in its optimiser's state, so a resumed run keeps
        # the same critic/generator rhythm. An fp16 step skipped by the gradient scaler
        # (inf/NaN gradients) is no step: before the first real one there is no state.
        first = opt_d.param_groups[0]["params"][0]
        critic_steps = int(opt_d.state.get(first, {}).get("step", 0))
        if critic_steps % self.n_critic == 0:
            out["g_loss"] = self._generator_step(fake, opt_g, backward, autocast)
        return out

    def _generator_step(self, fake, opt_g, backward, autocast) -> torch.Tensor:
        """The generator's step, through the discriminator itself (not its DDP wrapper)
        with its parameters frozen: no discriminator gradient is computed, nor
        all-reduced between processes, for a step that does not use it."""
        discriminator = self.model.discriminator
        frozen = [p for p in discriminator.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with autocast():
                g_loss = self._g_loss(discriminator(fake).float())
            backward(g_loss, opt_g)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return g_loss.detach()

    @torch.no_grad()
    def evaluate(self, loader, device, autocast):
        self.model.eval()
        total, count = _total(device), 0
        generator = torch.Generator().manual_seed(0)
        for x, _ in loader:
            x = x.to(device)
            z = torch.randn(len(x), self.model.z_dim, 1, 1, generator=generator).to(device)
            with autocast():
                fake = self.model.generator(z)
                loss = self._d_loss(self.model.discriminator(x).float(),
                                    self.model.discriminator(fake).float())
            total += loss * len(x)
            count += len(x)
        return {"val_loss": float(total) / count}

    @torch.no_grad()
    def samples(self, batch):
        self.model.eval()
        return self.model.generator(self.fixed_z.to(batch.device)).float().clamp(0, 1)


class StyleTask(Task):
    """Feed-forward style transfer (Johnson et al.): the model renders each training image,
    ``loss`` (a :class:`vistool.synthesize.fast_style.PerceptualLoss`, its network frozen)
    scores the result against the image's content and the style. Validation reports the
    mean perceptual loss ``val_loss`` and its ``val_content``/``val_style`` parts."""

    def __init__(self, model, lr, loss, weight_decay=0.0, optimizer="adam"):
        super().__init__(model, lr, weight_decay, optimizer)
        self.loss = loss

    def prepare(self):
        self.loss.to(next(self.model.parameters()).device)
        super().prepare()

    def _losses(self, net: nn.Module, x: torch.Tensor, autocast) -> torch.Tensor:
        with autocast():
            return self.loss(net(x).float(), x)

    def step(self, x, y, optimizers, backward, autocast):
        losses = self._losses(self.train_model, x, autocast)
        backward(losses[0], optimizers[0])
        losses = losses.detach()
        return {"loss": losses[0], "content": losses[1], "style": losses[2]}

    @torch.no_grad()
    def evaluate(self, loader, device, autocast):
        self.model.eval()
        total, count = torch.zeros(4, device=device), 0
        for x, _ in loader:
            x = x.to(device)
            total += self._losses(self.model, x, autocast) * len(x)
            count += len(x)
        mean = (total / count).tolist()
        return {"val_loss": mean[0], "val_content": mean[1], "val_style": mean[2]}

    @torch.no_grad()
    def samples(self, batch):
        self.model.eval()
        return torch.cat([batch[:4], self.model(batch[:4]).float()]).clamp(0, 1)
