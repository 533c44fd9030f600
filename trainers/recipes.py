"""Named recipes: a model, its data, its optimiser settings and the result to expect.

``run_recipe(name, ...)`` builds everything and calls :func:`trainers.loop.train`; the
``vistool train`` command is a thin face over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vistool.core.cache import cache_dir
from vistool.core.errors import VistoolError, suggestion

from .data import load_data
from .loop import TrainConfig, train
from .models import get_model, model_defaults
from .tasks import ClassifierTask, GanTask, ReconstructionTask, StyleTask, Task

__all__ = ["DEMO_DIGITS", "RECIPES", "Recipe", "pretrained_digits", "pretrained_shapes_cnn",
           "run_recipe"]

GREY = ("mnist", "fashion-mnist", "digits")
COLOUR = ("cifar10", "shapes", "imagefolder")


@dataclass(frozen=True)
class Recipe:
    """One named training setup; ``expected`` is the result its defaults reach. For the
    offline recipes it is what ``vistool train NAME --quiet`` measured (best val_acc and
    wall time of two runs on a 2-core CPU shared with other jobs, with its load average);
    "(textbook)" marks the figure of the literature for recipes whose datasets need a
    download."""

    arch: str
    dataset: str
    datasets: tuple[str, ...]
    task: str = "classify"  # classify | reconstruct | gan | style
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: tuple[str, ...] = ()
    loss: str = ""
    n_critic: int = 1
    expected: str = ""


_CIFAR = {"datasets": COLOUR, "augment": ("crop", "flip"), "epochs": 30}
_GEN = {"datasets": GREY, "weight_decay": 0.0, "schedule": "constant", "optimizer": "adam"}

RECIPES: dict[str, Recipe] = {
    "lenet-mnist": Recipe("lenet", "mnist", GREY, epochs=10, expected="val_acc ≈ 0.99 (textbook)"),
    "lenet-digits": Recipe("lenet", "digits", GREY, epochs=15, batch_size=32, lr=3e-3,
                           expected="val_acc ≥ 0.95 (measured: 0.989; 216 s, 224 s on a 2-core "
                                    "CPU at load ≈ 8)"),
    "cnn-mnist": Recipe("mnist_cnn", "mnist", GREY, epochs=10,
                        expected="val_acc ≈ 0.995 (textbook)"),
    "simplecnn-cifar10": Recipe("simple_cnn", "cifar10", lr=2e-3,
                                expected="val_acc ≈ 0.88 (textbook)", **_CIFAR),
    "alexnet-cifar10": Recipe("alexnet_book", "cifar10", expected="val_acc ≈ 0.85 (textbook)",
                              **_CIFAR),
    "vgg16-cifar10": Recipe("vgg_book", "cifar10", arch_kwargs={"depth": 16}, optimizer="sgd",
                            lr=0.05, expected="val_acc ≈ 0.93 (textbook)", **_CIFAR),
    "googlenet-cifar10": Recipe("googlenet_book", "cifar10", optimizer="sgd", lr=0.05,
                                expected="val_acc ≈ 0.94 (textbook)", **_CIFAR),
    "resnet-cifar10": Recipe("resnet_book", "cifar10", optimizer="sgd", lr=0.05,
                             expected="val_acc ≈ 0.94 (textbook)", **_CIFAR),
    "transfer-imagefolder": Recipe("transfer", "imagefolder", ("imagefolder",),
                                   arch_kwargs={"mode": "finetune", "pretrained": True},
                                   epochs=5, batch_size=32, lr=3e-4, augment=("crop", "flip"),
                                   expected="cats vs dogs val_acc ≈ 0.97 (pretrained) (textbook)"),
    "shapes-cnn": Recipe("shapes_cnn", "shapes", ("shapes",), epochs=6, batch_size=64, lr=1e-2,
                         weight_decay=1e-4,
                         expected="val_acc ≥ 0.98 (measured: 0.988; 563 s, 960 s on a 2-core "
                                  "CPU at load 8-12)"),
    "autoencoder-mnist": Recipe("autoencoder", "mnist", task="reconstruct", loss="bce",
                                epochs=10, lr=1e-3, expected="BCE/image ≈ 130 (textbook)", **_GEN),
    "conv-autoencoder-mnist": Recipe("conv_autoencoder", "mnist", task="reconstruct",
                                     loss="bce", epochs=10, lr=1e-3,
                                     expected="BCE/image ≈ 70 (textbook)", **_GEN),
    "vae-mnist": Recipe("vae", "mnist", task="reconstruct", loss="vae", epochs=10, lr=1e-3,
                        expected="BCE+KL/image ≈ 105 (textbook)", **_GEN),
    "gan-mnist": Recipe("gan", "mnist", task="gan", loss="bce", epochs=30, lr=2e-4,
                        expected="recognisable digits after ~30 epochs (textbook)", **_GEN),
    "lsgan-mnist": Recipe("gan", "mnist", task="gan", loss="lsgan", epochs=30, lr=2e-4,
                          expected="recognisable digits after ~30 epochs (textbook)", **_GEN),
    "dcgan-mnist": Recipe("dcgan", "mnist", task="gan", loss="bce", epochs=10, lr=2e-4,
                          expected="sharp digits after ~10 epochs (textbook)", **_GEN),
    "fast-style": Recipe("style_transformer", "images", ("images",), task="style", epochs=2,
                         batch_size=4, lr=1e-3, optimizer="adam", weight_decay=0.0,
                         schedule="constant",
                         expected="Johnson et al.: 2 epochs over COCO's 80k images at 256², "
                                  "batch 4, VGG16 losses (textbook)"),
    "wgan-gp-mnist": Recipe("dcgan", "mnist", task="gan", loss="wgan-gp", n_critic=5,
                            arch_kwargs={"critic": True}, epochs=20, lr=1e-4,
                            expected="sharp digits after ~20 epochs (textbook)", **_GEN),
}


def _input_size(recipe: Recipe, image_size: int | None = None) -> tuple[int, int, int]:
    """The image size the recipe trains on (a GAN's model input is its latent)."""
    if recipe.task == "gan":
        return (1, 28, 28)
    if image_size:
        return (3, image_size, image_size)
    return tuple(model_defaults(recipe.arch)["input_size"])  # type: ignore[return-value]


def run_recipe(name: str, out_dir: Path, dataset: str | None = None,
               data_dir: str | None = None, download: bool = False, resume: bool = False,
               pretrained: bool | None = None, log=None, style: Sequence[str] = (),
               style_weight: float = 1e5, image_size: int | None = None,
               **overrides: Any) -> dict[str, Any]:
    """Train recipe ``name`` into ``out_dir``; ``overrides`` are :class:`TrainConfig` fields
    (epochs, batch_size, lr, seed, device, amp, workers, progress ...).

    ``style`` (style image paths), ``style_weight`` and ``image_size`` (the side training
    images are resized to, default 256) are the ``fast-style`` recipe's; ``pretrained``
    False gives it a random-weight VGG16 loss network (transfer recipes: a random backbone).
    """
    if name not in RECIPES:
        raise VistoolError(f"unknown recipe {name!r}" + suggestion(name, RECIPES,
                                                                   "recipes with --list"))
    recipe = RECIPES[name]
    dataset = dataset or recipe.dataset
    if dataset not in recipe.datasets:
        raise VistoolError(f"recipe {name} trains on {', '.join(recipe.datasets)}, not "
                           f"{dataset!r}; choose one of those with --dataset")
    if (recipe.task == "style") != bool(style) or (image_size and recipe.task != "style"):
        raise VistoolError("recipe fast-style needs --style IMG (repeat it to blend styles)"
                           if recipe.task == "style" else
                           f"--style and --image-size are fast-style's; recipe {name} has none")
    config = replace(TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size,
                                 lr=recipe.lr, schedule=recipe.schedule),
                     **{k: v for k, v in overrides.items() if v is not None})
    defaults = model_defaults(recipe.arch)
    size = _input_size(recipe, image_size)
    mean, std = defaults["mean"], defaults["std"]
    if len(mean) != size[0]:
        mean, std = mean[:1] * size[0], std[:1] * size[0]
    data = load_data(dataset, size, mean, std, augment=recipe.augment, data_dir=data_dir,
                     download=download, seed=config.seed)
    kwargs = dict(recipe.arch_kwargs)
    if recipe.task == "classify":
        kwargs["num_classes"] = len(data.classes)
        if recipe.arch != "transfer":
            kwargs.update(in_channels=size[0], image_size=size[1])
    if pretrained is not None and "pretrained" in kwargs:
        kwargs["pretrained"] = pretrained
    torch.manual_seed(config.seed)  # the initial weights are part of the run
    model = get_model(recipe.arch, **kwargs)
    extra: dict[str, Any] = {}
    if recipe.task == "style":
        task, extra = _style_task(model, config.lr, style, style_weight, size[1], pretrained)
    else:
        task = _task(recipe, model, config.lr)
    rebuild = {**kwargs, **({"pretrained": False} if "pretrained" in kwargs else {})}
    model_input = list(size)
    if recipe.task == "gan":  # the model's input is its latent, which is not normalised
        model_input = list(defaults["input_size"])
        mean, std = [0.0] * model_input[0], [1.0] * model_input[0]
    metadata = {"arch": recipe.arch, "arch_kwargs": rebuild, "recipe": name,
                "dataset": dataset,
                "classes": data.classes if recipe.task == "classify" else None,
                "input_size": model_input, "mean": list(mean), "std": list(std),
                "task": recipe.task, **extra}
    return train(task, data, config, out_dir, metadata, resume=resume, log=log)


def _task(recipe: Recipe, model: torch.nn.Module, lr: float) -> Task:
    """The classifier, reconstruction or GAN task of ``recipe``."""
    if recipe.task == "classify":
        return ClassifierTask(model, lr, recipe.weight_decay, recipe.optimizer)
    if recipe.task == "reconstruct":
        return ReconstructionTask(model, lr, recipe.weight_decay, recipe.optimizer,
                                  loss=recipe.loss)
    return GanTask(model, lr, loss=recipe.loss, n_critic=recipe.n_critic)


def _style_task(model: torch.nn.Module, lr: float, style: Sequence[str], style_weight: float,
                size: int, pretrained: bool | None) -> tuple[Task, dict[str, Any]]:
    """The fast-style task: VGG16 perceptual losses against the style images (their longer
    side ``size``), and what the checkpoint records about them."""
    import hashlib
    import warnings

    from vistool.core.errors import RandomWeightsWarning, WeightsError
    from vistool.core.imageio import load_tensor
    from vistool.core.zoo import load_model
    from vistool.synthesize.fast_style import PerceptualLoss

    images = [load_tensor(path, size) for path in style]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)  # recorded below instead
            loss_net = load_model("vgg16", weights="none" if pretrained is False else "default",
                                  device="cpu")
    except WeightsError as exc:
        found = str(exc).split("; copy the file there")[0]
        raise VistoolError(f"the loss network needs VGG16's ImageNet weights: {found}; copy "
                           "the file there, or pass --no-pretrained to train against a "
                           "random-weight VGG16 (the result will not look like the paper's)"
                           ) from None
    loss = PerceptualLoss(loss_net, images, style_weight=style_weight)
    styles = [{"path": str(p), "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()}
              for p in style]
    return StyleTask(model, lr, loss), {
        "styles": styles, "style_weight": style_weight, "loss_network": loss_net.describe(),
        "layers": {"content": loss.content_layers, "style": loss.style_layers}}


def pretrained_shapes_cnn(progress: bool = True, log=None) -> Path:
    """The cached ``shapes-cnn`` checkpoint, trained on first use (minutes on a CPU: see the
    recipe's ``expected``)."""
    out_dir = cache_dir() / "shapes-cnn-v3"
    best = out_dir / "best.safetensors"
    if not best.is_file():
        run_recipe("shapes-cnn", out_dir, device="cpu", progress=progress, log=log)
    return best


#: The generative models ``make demo`` trains on scikit-learn's digits: (recipe, epochs).
DEMO_DIGITS = (("vae-mnist", 20), ("dcgan-mnist", 10))


def pretrained_digits(recipe: str, epochs: int, progress: bool = True, log=None) -> Path:
    """The cached checkpoint of the MNIST-sized ``recipe`` trained on scikit-learn's digits
    for ``epochs`` epochs (trained on first use, on the CPU; ``make demo`` uses it)."""
    out_dir = cache_dir() / f"{recipe}-digits-{epochs}ep-v2"  # v2: a GAN's best is its last epoch
    best = out_dir / "best.safetensors"
    if not best.is_file():
        run_recipe(recipe, out_dir, dataset="digits", epochs=epochs, device="cpu",
                   progress=progress, log=log)
    return best
