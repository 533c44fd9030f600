"""The textbook generative models: autoencoders, the VAE, GAN/LSGAN (MLP), DCGAN, WGAN-GP.

All work on (N, C, 28, 28) images in [0, 1] (MNIST-sized). A GAN module holds its
``generator`` and ``discriminator``; its ``forward`` generates from latents shaped
(N, z, 1, 1), so vistool's layer table and activations work on it like on any model.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_model

UNIT = ((0.0,), (1.0,))  # images stay in [0, 1]: no normalisation


@register_model("autoencoder", input_size=(1, 28, 28), mean=UNIT[0], std=UNIT[1])
class Autoencoder(nn.Module):
    """MLP autoencoder 784-128-64-``code``-64-128-784 (a 3-d code can be plotted)."""

    def __init__(self, code: int = 3, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        d = in_channels * image_size * image_size
        self.shape = (in_channels, image_size, image_size)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, 128), nn.ReLU(inplace=True),
                                     nn.Linear(128, 64), nn.ReLU(inplace=True),
                                     nn.Linear(64, code))
        self.decoder = nn.Sequential(nn.Linear(code, 64), nn.ReLU(inplace=True),
                                     nn.Linear(64, 128), nn.ReLU(inplace=True),
                                     nn.Linear(128, d), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x)).view(-1, *self.shape)


@register_model("conv_autoencoder", input_size=(1, 28, 28), mean=UNIT[0], std=UNIT[1])
class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder: two stride-2 convs down to 7x7, two transposed convs up."""

    def __init__(self, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(16, in_channels, 4, 2, 1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


@register_model("vae", input_size=(1, 28, 28), mean=UNIT[0], std=UNIT[1])
class VAE(nn.Module):
    """Variational autoencoder (MLP, ``latent``-d Gaussian code, reparameterisation).

    ``forward`` returns the reconstruction; ``encode``/``decode`` expose the latent space
    and ``loss`` is BCE + KL (summed over pixels, averaged over the batch).
    """

    def __init__(self, latent: int = 20, in_channels: int = 1, image_size: int = 28,
                 hidden: int = 400):
        super().__init__()
        d = in_channels * image_size * image_size
        self.shape = (in_channels, image_size, image_size)
        self.latent = latent
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(inplace=True))
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, d), nn.Sigmoid())

    def encode(self, x):
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        return self.decoder(z).view(-1, *self.shape)

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        self._last = (mu, logvar)
        return self.decode(z)

    def loss(self, x, recon):
        mu, logvar = (t.float() for t in self._last)
        bce = nn.functional.binary_cross_entropy(recon, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (bce + kl) / len(x)


class _GAN(nn.Module):
    """A generator/discriminator pair; ``forward(z)`` generates images from (N, z, 1, 1)."""

    z_dim: int

    def forward(self, z):
        return self.generator(z)


@register_model("gan", input_size=(64, 1, 1), mean=UNIT[0], std=UNIT[1])
class GAN(_GAN):
    """The original GAN with MLP generator and discriminator (LeakyReLU, Sigmoid/Tanh-free:
    the discriminator returns logits; the generator returns images in [0, 1])."""

    def __init__(self, z_dim: int = 64, in_channels: int = 1, image_size: int = 28,
                 hidden: int = 256):
        super().__init__()
        d = in_channels * image_size * image_size
        self.z_dim = z_dim
        self.generator = nn.Sequential(
            nn.Flatten(), nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, 2 * hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(2 * hidden, d), nn.Sigmoid(), nn.Unflatten(1, (in_channels, image_size,
                                                                     image_size)))
        self.discriminator = nn.Sequential(
            nn.Flatten(), nn.Linear(d, 2 * hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(2 * hidden, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, 1))


@register_model("dcgan", input_size=(64, 1, 1), mean=UNIT[0], std=UNIT[1])
class DCGAN(_GAN):
    """DCGAN for 28x28: transposed-conv generator (7 -> 14 -> 28) with batch norm, conv
    discriminator (LeakyReLU). ``critic=True`` (WGAN-GP) drops batch norm from the
    discriminator, as the gradient penalty requires."""

    def __init__(self, z_dim: int = 64, in_channels: int = 1, width: int = 64,
                 critic: bool = False):
        super().__init__()
        self.z_dim = z_dim
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(z_dim, 2 * width, 7, 1, 0, bias=False),
            nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, in_channels, 4, 2, 1), nn.Sigmoid())
        norm = (lambda c: nn.Identity()) if critic else nn.BatchNorm2d
        self.discriminator = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), norm(2 * width),
            nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(2 * width, 1, 7), nn.Flatten())
