"""Devices: ``auto`` picks CUDA, then MPS, then CPU; everything else follows the model.

A CUDA device is always returned with its index (``cuda:0``, never bare ``cuda``):
``torch.cuda.set_device``, ``torch.cuda.get_rng_state`` and friends refuse a device
without one. Under ``torchrun`` (:func:`start_processes`) each process takes the GPU of
its local rank and the process group's backend follows the device: nccl for CUDA, gloo
for the CPU.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import ModelError

__all__ = ["DeviceConstant", "model_device", "process_device", "process_group_backend",
           "resolve_device", "start_processes", "synchronize"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks CUDA, then MPS, then CPU; anything else is checked and used."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available; use `device='cpu'`")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' requested but MPS is not available; use `device='cpu'`")
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def process_device(device: str | torch.device | None, local_rank: int,
                   world: int) -> torch.device:
    """The device of one process of a run of ``world`` processes: one process resolves
    ``device`` (:func:`resolve_device`); several take ``cuda:LOCAL_RANK`` for ``auto`` and
    ``cuda`` when CUDA is there, else the CPU (``auto``, ``cpu``). A GPU named by index, or
    MPS, would be shared by every process and is refused, as is a host with more
    processes than GPUs."""
    if world == 1:
        return resolve_device(device)
    name = "auto" if device is None else str(device)
    if name in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ModelError(f"process {local_rank} of this host has no GPU of its own "
                             f"({count} GPU(s) for more processes): start at most {count} "
                             "processes per host, or use `device='cpu'`")
        return torch.device("cuda", local_rank)
    dev = resolve_device("cpu" if name == "auto" else name)
    if dev.type == "mps" or (dev.type == "cuda" and ":" in name):
        raise ModelError(f"`device={name!r}` would put all {world} processes on one device; "
                         "use `device='cuda'` (each process takes the GPU of its local rank) "
                         "or `device='cpu'`")
    return dev


def process_group_backend(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU ones (nccl refuses CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


def start_processes(device: str | torch.device | None = "auto"
                    ) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process. Under ``torchrun`` (``WORLD_SIZE`` > 1)
    the device is chosen by :func:`process_device`, made current before the process
    group starts (so no process opens a context on GPU 0), and the group is started with
    the device's backend."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "LOCAL_RANK" not in os.environ:
        raise ModelError(f"WORLD_SIZE is {world} but LOCAL_RANK is not set: start the "
                         "processes with torchrun (or set LOCAL_RANK, each process's index "
                         "on its host)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = process_device(device, local_rank, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world == 1:
        return 0, 1, dev
    import torch.distributed as dist

    if not dist.is_initialized():  # nccl is bound to this process's GPU from the start
        dist.init_process_group(process_group_backend(dev),
                                device_id=dev if dev.type == "cuda" else None)
    return dist.get_rank(), world, dev


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA and MPS run asynchronously): call it
    before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


class DeviceConstant:
    """A constant made on the CPU and copied once to each device and dtype it is used
    with (a copy from pageable host memory makes the host wait for the GPU: a loop that
    copied its constants at every step would wait at every step).

    Args:
        value: anything ``torch.as_tensor`` takes.
    """

    def __init__(self, value):
        self.value = torch.as_tensor(value)
        self._copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, tensor: torch.Tensor) -> torch.Tensor:
        """The constant on ``tensor``'s device; in its dtype when both are floating."""
        dtype = (tensor.dtype if self.value.is_floating_point() and tensor.is_floating_point()
                 else self.value.dtype)
        key = (tensor.device, dtype)
        copy = self._copies.get(key)
        if copy is None:  # a normal tensor (not an inference one), not the CPU original
            with torch.inference_mode(False):
                copy = self._copies[key] = self.value.to(tensor.device, dtype, copy=True)
        return copy
