"""Looking inside generative models: autoencoders, VAEs and GANs.

Reconstructions, the codes of a dataset (for a latent scatter), traversals of one latent
dimension, interpolation between two codes (linear, or spherical for Gaussian latents),
samples from the prior, the discriminator's scores on real and generated images, and a
strip of a run's sample grids over its epochs. Models are recognised by their parts:

* autoencoder: ``encoder`` and ``decoder`` modules;
* VAE: ``encode(x) -> (mu, logvar)``, ``decode(z)`` and ``latent`` (its size);
* GAN: ``generator``, ``discriminator`` and ``z_dim`` (latents are (N, z_dim, 1, 1)).

Every function runs the model in eval mode without gradients and gives it back as it was.
Grad-CAM on a discriminator needs nothing special: :func:`vistool.explain` on
``model.discriminator`` with a target callable (:func:`fakeness`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .core.errors import VistoolError
from .core.state import preserved_state

__all__ = ["KINDS", "RealFake", "decode", "discriminator_scores", "encode", "fakeness",
           "interpolate", "model_kind", "reconstruct", "sample", "slerp", "traverse"]

KINDS = ("autoencoder", "vae", "gan")


def model_kind(model: nn.Module) -> str:
    """``"vae"``, ``"gan"`` or ``"autoencoder"`` (see the module's docstring).

    Raises:
        VistoolError: the model is none of them; the message names what it is.
    """
    if all(hasattr(model, a) for a in ("encode", "decode", "latent")):
        return "vae"
    if all(hasattr(model, a) for a in ("generator", "discriminator", "z_dim")):
        return "gan"
    if isinstance(getattr(model, "encoder", None), nn.Module) and isinstance(
            getattr(model, "decoder", None), nn.Module):
        return "autoencoder"
    raise VistoolError(f"the model is a {type(model).__name__}, not an autoencoder, VAE or GAN "
                       "(no encoder/decoder or generator/discriminator); give a checkpoint of "
                       "a generative recipe, e.g. 'vistool train vae-mnist --dataset digits'")


def _need(model: nn.Module, kinds: Sequence[str], what: str) -> str:
    kind = model_kind(model)
    if kind not in kinds:
        raise VistoolError(f"{what} needs {' or '.join(kinds)}; the model is a {kind} "
                           f"({type(model).__name__})")
    return kind


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The codes of ``images`` (N, C, H, W): a VAE's means, an autoencoder's encoder output."""
    kind = _need(model, ("autoencoder", "vae"), "encoding")
    with preserved_state(model, eval_mode=True):
        x = images.to(_device(model))
        return model.encode(x)[0] if kind == "vae" else model.encoder(x)


@torch.no_grad()
def decode(model: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Images from ``codes``: a VAE's or autoencoder's decoder, a GAN's generator."""
    kind = model_kind(model)
    with preserved_state(model, eval_mode=True):
        z = codes.to(_device(model))
        if kind == "vae":
            return model.decode(z)
        if kind == "gan":
            return model.generator(z.reshape(len(z), model.z_dim, 1, 1))
        out = model.decoder(z)
        shape = getattr(model, "shape", None)
        return out.view(-1, *shape) if shape is not None and out.dim() == 2 else out


def reconstruct(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``decode(encode(images))``: what the autoencoder or VAE (its mean code) returns."""
    return decode(model, encode(model, images))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of each row pair of ``a`` and ``b`` (flattened) at the
    fractions ``t`` (T,): (T, *a.shape[1:]) for one pair. Along the great circle when
    the norms are equal (the norm stays), linear where the vectors are (anti)parallel.
    Computed on the codes' device (float32, float64 for float64 codes) without waiting for
    it (``t`` may live anywhere); the angle by Kahan's formula, accurate also near 0 and
    pi where arccos of the cosine is not."""
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    u, v = a.flatten().to(dtype), b.flatten().to(a.device, dtype)
    un, vn = u / u.norm().clamp_min(1e-12), v / v.norm().clamp_min(1e-12)
    omega = 2 * torch.atan2((un - vn).norm(), (un + vn).norm())
    t = t.to(a.device, dtype)[:, None]
    sin = omega.sin()
    parallel = sin.abs() < 1e-6
    linear = (1 - t) * u + t * v
    spherical = (torch.sin((1 - t) * omega) * u + torch.sin(t * omega) * v) / torch.where(
        parallel, 1.0, sin)
    out = torch.where(parallel, linear, spherical)
    return out.to(a.dtype).reshape(len(t), *a.shape[1:] if a.dim() > 1 else a.shape)


def interpolate(model: nn.Module, a: torch.Tensor, b: torch.Tensor, steps: int = 10,
                spherical: bool | None = None) -> torch.Tensor:
    """Images along the way from code ``a`` to code ``b`` (each (1, ...)), ``steps`` of them,
    both ends included. ``spherical`` (default: for VAEs and GANs, whose codes are
    Gaussian) interpolates on the sphere (:func:`slerp`), else linearly."""
    if steps < 2:
        raise VistoolError(f"interpolation needs at least 2 steps, got {steps}")
    kind = model_kind(model)
    spherical = kind != "autoencoder" if spherical is None else spherical
    t = torch.linspace(0, 1, steps, device=a.device)
    if spherical:
        codes = slerp(a, b, t)
    else:
        t = t.reshape(-1, *[1] * (a.dim() - 1)).to(a)
        codes = (1 - t) * a + t * b
    return decode(model, codes)


def traverse(model: nn.Module, code: torch.Tensor, dim: int,
             values: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Vary latent dimension ``dim`` of ``code`` (1, D) over ``values``, every other fixed;
    returns (codes (V, D), images (V, C, H, W))."""
    flat = code.reshape(1, -1)
    if not 0 <= dim < flat.shape[1]:
        raise VistoolError(f"latent dimension {dim} is out of range; the code has "
                           f"{flat.shape[1]} dimensions (0..{flat.shape[1] - 1})")
    codes = flat.repeat(len(values), 1)
    codes[:, dim] = torch.as_tensor(list(values), dtype=codes.dtype, device=codes.device)
    return codes, decode(model, codes.reshape(len(values), *code.shape[1:]))


def _latent_size(model: nn.Module, kind: str) -> int:
    return model.z_dim if kind == "gan" else model.latent


def sample(model: nn.Module, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` codes drawn from the prior N(0, I) with ``seed`` (the same seed gives the
    same codes on any device, so grids of successive checkpoints compare) and their images."""
    kind = _need(model, ("vae", "gan"), "sampling from the prior")
    size = _latent_size(model, kind)
    codes = torch.randn(count, size, generator=torch.Generator().manual_seed(seed))
    return codes, decode(model, codes)


def fakeness(logits: torch.Tensor) -> torch.Tensor:
    """The target callable for Grad-CAM on a discriminator: minus its logit per image, so
    the map shows the regions that make the image look generated."""
    return -logits.reshape(len(logits), -1)[:, 0]


@torch.no_grad()
def discriminator_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The discriminator's logit (or critic value) per image (N,): higher is "real"."""
    _need(model, ("gan",), "discriminator scores")
    with preserved_state(model, eval_mode=True):
        return model.discriminator(images.to(_device(model))).reshape(len(images), -1)[:, 0]


class RealFake(nn.Module):
    """A discriminator as a two-class classifier: logits (its logit, minus its logit) for
    the classes ``real`` and ``fake``, so class tools (``vistool gradcam --part
    discriminator --target fake``) explain it; its layers are ``discriminator.*``."""

    classes = ("real", "fake")

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.discriminator(x).reshape(len(x), -1)[:, :1]
        return torch.cat([logit, -logit], 1)
