"""Generative: what an autoencoder, VAE or GAN checkpoint learnt: reconstructions, latent
sliders, interpolation and samples."""

from __future__ import annotations

import streamlit as st
import torch

from dashboard.common import Session, tab
from vistool import generative as gen
from vistool.drawing import enlarge, image_grid, to_uint8_hwc


def _grid(images: torch.Tensor, cols: int | None = None) -> object:
    return to_uint8_hwc(image_grid(images.float().clamp(0, 1).cpu(), cols=cols, cell=56))


def _digits(count: int, seed: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    data = torch.from_numpy(load_digits().images).float() / 16
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.nn.functional.interpolate(data[picks, None], size=28, mode="bilinear")


@tab
def render(session: Session) -> None:
    model, kind = session.loaded.model, session.kind
    seed = st.number_input("Seed", value=0, step=1, key="gen_seed")
    with torch.no_grad():
        if kind in ("vae", "autoencoder"):
            images = _digits(8, int(seed)).to(session.loaded.device)
            st.image(_grid(torch.cat([images, gen.reconstruct(model, images)]), cols=8),
                     caption="digits (top) and their reconstructions (bottom)")
            code = gen.encode(model, images[:1])
            a, b = code, gen.encode(model, images[1:2])
        else:
            code, _ = gen.sample(model, 1, int(seed))
            a, b = code, gen.sample(model, 2, int(seed) + 1)[0][1:]
        latent(model, code)
        st.image(_grid(gen.interpolate(model, a, b, steps=10), cols=10),
                 caption="interpolation between two codes")
        if kind in ("vae", "gan"):
            st.image(_grid(gen.sample(model, 32, int(seed))[1], cols=8),
                     caption="samples from the prior N(0, I)")


@st.fragment
def latent(model, code: torch.Tensor) -> None:
    """Sliders over the first latent dimensions; only this fragment reruns."""
    flat = code.reshape(1, -1).clone()
    dims = min(6, flat.shape[1])
    for i, column in enumerate(st.columns(dims)):
        flat[0, i] = column.slider(f"z{i}", -3.0, 3.0, float(flat[0, i].clamp(-3, 3)),
                                   key=f"gen_z{i}")
    with torch.no_grad():
        image = gen.decode(model, flat.reshape(code.shape))
    st.image(to_uint8_hwc(enlarge(image[0].float().clamp(0, 1).cpu().expand(3, -1, -1), 160)),
             caption="decoded from the sliders' code")
