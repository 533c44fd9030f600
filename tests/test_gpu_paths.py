"""The CUDA, MPS and multi-process paths, proven on a CPU machine.

``torch.cuda`` and ``torch.distributed`` calls are replaced by stand-ins that enforce the
real contracts (``set_device`` wants an index below the device count, nccl wants CUDA
tensors); the ``meta`` device stands in for a second device kind, on which an operation
that mixes it with CPU tensors fails as it would on CUDA; a two-process gloo run shows
what each rank draws and what DDP all-reduces. What needs a real GPU is in
``scripts/gpu_check.py``.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

import vistool.core.devices as devices
from trainers import loop
from trainers.models import get_model
from trainers.tasks import GanTask
from vistool.core.errors import ModelError

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


# --- stand-ins for torch.cuda and torch.distributed ------------------------------------------


class FakeCuda:
    """``gpus`` CUDA devices as far as device choice goes; records what is asked of them."""

    def __init__(self, monkeypatch, gpus: int):
        self.gpus, self.events = gpus, []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "current_device", self.current_device)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        monkeypatch.setattr(dist, "init_process_group", self.init_process_group)
        monkeypatch.setattr(dist, "get_rank", lambda: int(os.environ["RANK"]))

    def current_device(self) -> int:
        if not self.gpus:
            raise RuntimeError("No CUDA GPUs are available")
        return 0

    def set_device(self, device) -> None:
        # torch.cuda.set_device: "Expected a torch.device with a specified index" for cuda
        index = torch._utils._get_device_index(device)
        if not 0 <= index < self.gpus:
            raise RuntimeError("CUDA error: invalid device ordinal")
        self.events.append(("set_device", index))

    def init_process_group(self, backend: str, **_kwargs) -> None:
        self.events.append(("init_process_group", backend))


def processes(monkeypatch, world: int, rank: int) -> None:
    for key, value in (("WORLD_SIZE", world), ("RANK", rank), ("LOCAL_RANK", rank)):
        monkeypatch.setenv(key, str(value))


@pytest.mark.parametrize(("gpus", "world", "rank", "requested", "device", "backend"), [
    (0, 1, 0, "auto", "cpu", None),
    (0, 2, 1, "auto", "cpu", "gloo"),
    (0, 2, 0, "cpu", "cpu", "gloo"),
    (1, 1, 0, "auto", "cuda:0", None),  # set_device(torch.device("cuda")) raised here
    (1, 1, 0, "cuda", "cuda:0", None),
    (1, 1, 0, "cpu", "cpu", None),
    (1, 2, 0, "auto", "cuda:0", "nccl"),
    (1, 2, 1, "cpu", "cpu", "gloo"),  # --device cpu on a GPU host: gloo, not nccl
    (2, 2, 0, "auto", "cuda:0", "nccl"),
    (2, 2, 1, "auto", "cuda:1", "nccl"),
    (2, 2, 1, "cuda", "cuda:1", "nccl"),
    (2, 2, 1, "cpu", "cpu", "gloo"),
])
def test_each_process_gets_its_device_and_the_backend_that_goes_with_it(
        monkeypatch, gpus, world, rank, requested, device, backend):
    cuda = FakeCuda(monkeypatch, gpus)
    processes(monkeypatch, world, rank)
    assert devices.start_processes(requested) == (rank, world, torch.device(device))
    expected = []
    if device.startswith("cuda"):  # made current before the group opens a context
        expected.append(("set_device", int(device[-1])))
    if backend:
        expected.append(("init_process_group", backend))
    assert cuda.events == expected


@pytest.mark.parametrize(("gpus", "world", "rank", "requested", "message"), [
    (0, 1, 0, "cuda", "CUDA is not available"),
    (1, 2, 1, "auto", "process 1 of this host has no GPU of its own"),
    (2, 2, 0, "cuda:1", "would put all 2 processes on one device"),
])
def test_impossible_device_choices_are_one_clear_error(monkeypatch, gpus, world, rank,
                                                        requested, message):
    cuda = FakeCuda(monkeypatch, gpus)
    processes(monkeypatch, world, rank)
    with pytest.raises(ModelError, match=message):
        devices.start_processes(requested)
    assert cuda.events == []


def test_several_processes_without_a_local_rank_are_refused(monkeypatch):
    """Launchers other than torchrun: every rank would take cuda:0 (nccl: duplicate GPU)."""
    FakeCuda(monkeypatch, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ModelError, match="LOCAL_RANK is not set"):
        devices.start_processes("auto")


def test_resolve_device_always_names_the_gpu_index(monkeypatch):
    FakeCuda(monkeypatch, 2)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_training_and_streaming_choose_devices_through_start_processes():
    """Both faces that start process groups use the one tested function."""
    for path in ("trainers/loop.py", "vistool/cli/streaming.py"):
        source = (ROOT / path).read_text()
        assert "start_processes(" in source, path
        assert "init_process_group(" not in source and "environ" not in source, path


def test_cudnn_benchmark_for_cuda_training_and_back_after(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with loop._tuned_backends(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark is False
    with loop._tuned_backends(torch.device("cuda", 0)):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is False


# --- AMP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("native", "emulated", "scaled"), [
    (True, True, False),  # Ampere and later: bf16, no scaler
    (False, True, True),  # T4, V100: bf16 only emulated -> fp16 with a GradScaler
])
def test_amp_uses_fp16_with_a_scaler_where_bf16_is_only_emulated(monkeypatch, native, emulated,
                                                                  scaled):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: emulated if including_emulation
                        else native)
    with warnings.catch_warnings():  # without CUDA the scaler warns that it is disabled
        warnings.simplefilter("ignore")
        _, scaler = loop._autocast_factory(torch.device("cuda", 0), amp=True)
    assert (scaler is not None) == scaled


class CountingScaler(torch.amp.GradScaler):
    """A real (CPU) gradient scaler that counts its updates."""

    def __init__(self, **kwargs):
        super().__init__("cpu", **kwargs)
        self.updates = 0

    def update(self, new_scale=None):
        self.updates += 1
        super().update(new_scale)


def test_the_scaler_updates_once_per_iteration_of_a_two_optimiser_gan(tmp_path, monkeypatch):
    from trainers.recipes import run_recipe

    scaler = CountingScaler()
    monkeypatch.setattr(loop, "_autocast_factory", lambda device, amp: (nullcontext, scaler))
    steps = []
    step = GanTask.step
    monkeypatch.setattr(GanTask, "step", lambda self, *a: steps.append(1) or step(self, *a))
    run_recipe("gan-mnist", tmp_path / "gan", dataset="digits", epochs=1, batch_size=256,
               device="cpu", progress=False, log=lambda _line: None)
    assert len(steps) > 1 and scaler.updates == len(steps)


def test_a_scaler_skipped_first_critic_step_is_no_step_and_no_keyerror():
    """An fp16 scaler that finds inf gradients skips the step: the optimiser has no state."""
    torch.manual_seed(0)
    task = GanTask(get_model("gan"), 1e-4, loss="wgan-gp", n_critic=2)
    task.prepare()
    optimizers = task.build_optimizers()
    scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))

    def backward(loss, optimizer):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)

    out = task.step(torch.rand(4, 1, 28, 28), None, optimizers, backward, nullcontext)
    assert not optimizers[1].state  # the critic's step was skipped
    assert "g_loss" in out  # zero critic steps: 0 % n_critic == 0


def test_gram_matrices_under_bf16_autocast_equal_fp32():
    from vistool.synthesize.style import gram_matrix

    features = torch.randn(2, 16, 64, 64, generator=torch.Generator().manual_seed(0)) * 30
    expected = gram_matrix(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gram_matrix(features.to(torch.bfloat16))
        got_fp32_input = gram_matrix(features)
    assert got.dtype == got_fp32_input.dtype == torch.float32
    torch.testing.assert_close(got_fp32_input, expected, rtol=1e-6, atol=0)
    # bf16 inputs keep 8 bits of mantissa, the product and the sum are then exact in fp32
    torch.testing.assert_close(got, gram_matrix(features.to(torch.bfloat16).float()),
                               rtol=1e-6, atol=0)


def test_training_steps_return_device_tensors_not_floats():
    """A float would have made the host wait for the GPU at every step."""
    torch.manual_seed(0)
    task = GanTask(get_model("gan"), 1e-4)
    task.prepare()

    def backward(loss, optimizer):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    out = task.step(torch.rand(4, 1, 28, 28), None, task.build_optimizers(), backward,
                    nullcontext)
    assert set(out) == {"loss", "d_loss", "g_loss"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad
               for v in out.values())


# --- RNG per rank, resume ----------------------------------------------------------------------


def test_rank_seeds_differ_and_rank_zero_keeps_the_run_seed():
    assert loop.rank_seed(7, 0) == 7
    assert len({loop.rank_seed(7, r) for r in range(8)}) == 8


class _FakeRun:
    def __init__(self, device, rank=0, world=1, seed=0):
        self.device, self.rank, self.world = torch.device(device), rank, world
        self.config = loop.TrainConfig(seed=seed)


def test_each_rank_resumes_its_own_generators(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((s, d)))
    states = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        states.append({"cpu": torch.get_rng_state(), "cuda": torch.tensor([rank])})
    run = _FakeRun("cuda:1", rank=1, world=2)
    loop._restore_rng(run, {"epoch": 3, "rng_by_rank": states})
    assert torch.equal(torch.get_rng_state(), states[1]["cpu"])
    assert restored == [(states[1]["cuda"], torch.device("cuda", 1))]


def test_mps_generator_is_saved_and_restored(monkeypatch):
    saved = torch.tensor([1, 2, 3], dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: saved)
    monkeypatch.setattr(torch.mps, "set_rng_state", restored.append)
    run = _FakeRun("mps")
    (state,) = loop._rng_states(run)
    assert torch.equal(state["mps"], saved)
    loop._restore_rng(run, {"epoch": 1, "rng_by_rank": [state]})
    assert restored == [saved]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_TWO_RANKS = '''
import json, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP
from trainers import tasks
from trainers.recipes import run_recipe

out = Path(sys.argv[1])
phase, calls, noise, val_sizes, seen = ["d"], [], [], [], []
step, generator_step, prepare, evaluate = (tasks.GanTask.step, tasks.GanTask._generator_step,
                                           tasks.GanTask.prepare, tasks.GanTask.evaluate)

def record_step(self, x, *args):
    state = torch.get_rng_state()  # the noise the step is about to draw
    noise.append(torch.randn(len(x), self.model.z_dim).flatten()[:8].tolist())
    torch.set_rng_state(state)
    return step(self, x, *args)

def record_generator_step(self, *args):
    phase[0] = "g"
    try:
        return generator_step(self, *args)
    finally:
        phase[0] = "d"

def record_prepare(self):
    prepare(self)
    seen.append(self)
    for name in ("generator", "discriminator"):
        net = getattr(self, name)
        assert isinstance(net, DDP) and not net.broadcast_buffers
        def hook(state, bucket, name=name):
            calls.append([name, phase[0]])
            return default_hooks.allreduce_hook(state, bucket)
        net.register_comm_hook(None, hook)

def record_evaluate(self, loader, *args):
    val_sizes.append(len(loader.dataset))
    return evaluate(self, loader, *args)

tasks.GanTask.step, tasks.GanTask._generator_step = record_step, record_generator_step
tasks.GanTask.prepare, tasks.GanTask.evaluate = record_prepare, record_evaluate
run_recipe("dcgan-mnist", out / "run", dataset="digits", epochs=1, batch_size=128,
           device="cpu", progress=False, log=lambda _line: None)
buffers = [float(b.float().sum()) for b in seen[0].model.discriminator.buffers()
           if b.is_floating_point()]
(out / f"rank{dist.get_rank()}.json").write_text(json.dumps({
    "noise": noise, "calls": calls, "val_sizes": val_sizes, "buffers": buffers}))
'''


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """A two-process gloo run of the DCGAN recipe (its discriminator has batch norm and
    runs twice per step) on digits, each rank recording its noise and DDP's all-reduces."""
    out = tmp_path_factory.mktemp("two-ranks")
    script = out / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                    str(script), str(out)], check=True, env=env, capture_output=True, cwd=ROOT,
                   timeout=600)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_each_rank_draws_its_own_gan_noise(two_ranks):
    _, ranks = two_ranks
    assert len(ranks[0]["noise"]) == len(ranks[1]["noise"]) > 0
    assert ranks[0]["noise"][0] != ranks[1]["noise"][0]


def test_the_generator_step_all_reduces_no_discriminator_gradient(two_ranks):
    _, ranks = two_ranks
    for rank in ranks:
        calls = [tuple(c) for c in rank["calls"]]
        assert ("discriminator", "d") in calls and ("generator", "g") in calls
        assert ("discriminator", "g") not in calls


def test_batch_norm_statistics_are_averaged_over_the_ranks(two_ranks):
    """DDP does not broadcast them (two discriminator forwards per step); the loop averages
    them before validating and saving."""
    _, ranks = two_ranks
    assert ranks[0]["buffers"] and ranks[0]["buffers"] == pytest.approx(ranks[1]["buffers"])


def test_validation_is_split_between_the_ranks(two_ranks):
    _, ranks = two_ranks
    from trainers.data import load_data

    val = len(load_data("digits", (1, 28, 28), [0.0], [1.0]).val)
    sizes = [rank["val_sizes"][-1] for rank in ranks]
    assert sum(sizes) == val and max(sizes) < val


def test_the_state_file_holds_every_ranks_generators(two_ranks):
    out, _ = two_ranks
    state = torch.load(out / "run" / "last-state.pt", weights_only=True)
    first, second = state["rng_by_rank"]
    assert not torch.equal(first["cpu"], second["cpu"])


# --- a second device kind: meta ---------------------------------------------------------------


class HostCopies(TorchDispatchMode):
    """Counts the copies from CPU tensors to tensors of another device."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[0] if func is torch.ops.aten._to_copy.default else args[1]
            target = out if func is torch.ops.aten._to_copy.default else args[0]
            if source.device.type == "cpu" and target.device.type != "cpu":
                self.count += 1
        return out


def test_interpolation_runs_on_the_codes_device():
    """torch.linspace on the CPU met the codes of a CUDA or MPS model."""
    from vistool import generative

    model = get_model("vae").to("meta")
    a, b = torch.randn(1, model.latent, device="meta"), torch.randn(1, model.latent, device="meta")
    for spherical in (True, False):
        frames = generative.interpolate(model, a, b, steps=5, spherical=spherical)
        assert frames.device.type == "meta" and frames.shape[0] == 5
    assert generative.slerp(a, b, torch.linspace(0, 1, 3)).device.type == "meta"


def test_slerp_of_antiparallel_codes_of_different_norms_is_linear():
    """float32's arccos of a cosine near -1 is far from pi: the old test missed the
    (anti)parallel case and divided by a tiny sine."""
    from vistool.generative import slerp

    for seed in range(50):
        a = torch.randn(1, 64, generator=torch.Generator().manual_seed(seed))
        t = torch.linspace(0, 1, 5)
        torch.testing.assert_close(slerp(a, -2 * a, t), (1 - t)[:, None] * a - 2 * t[:, None] * a,
                                   rtol=1e-5, atol=1e-5)
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # a quarter circle
    torch.testing.assert_close(slerp(a, b, torch.tensor([0.5])),
                               torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5]]))


def test_a_device_constant_first_used_in_inference_mode_still_serves_autograd():
    from vistool.core.devices import DeviceConstant

    constant = DeviceConstant([1.0, 2.0])
    with torch.inference_mode():
        constant.like(torch.zeros(2))
    x = torch.ones(2, requires_grad=True)
    (x * constant.like(x)).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0]
    constant.like(x).mul_(0)  # the copies are copies: the CPU value stays
    assert constant.value.tolist() == [1.0, 2.0]


def test_feature_visualisation_constants_go_to_the_device_once():
    from vistool.synthesize import objectives
    from vistool.synthesize import param as param_module
    from vistool.synthesize.param import PixelImage

    acts = {"layer": torch.zeros(2, 4, 3, 3, device="meta")}
    objective = objectives.channel("layer", [1, 2]) + objectives.direction(
        "layer", torch.ones(4))
    param = PixelImage((3, 8, 8), [torch.Generator().manual_seed(i) for i in range(2)],
                       decorrelate=True)
    values = torch.zeros(2, 3, 8, 8, device="meta")
    param_module._CORRELATION._copies.clear()  # copies of earlier tests in this process
    with HostCopies() as first:
        objective(acts)
        param._to_rgb(values)
    with HostCopies() as later:
        for _ in range(3):
            objective(acts)
            param._to_rgb(values)
    assert first.count == 3 and later.count == 0


def test_score_and_ablation_cam_size_their_batches_from_free_gpu_memory(monkeypatch):
    from torch import nn

    from vistool.explainers import inference

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    sample = torch.zeros(1, 3, 32, 32)
    per_image = 2 * 8 * 32 * 32 * 4  # the conv's and the ReLU's outputs, float32
    monkeypatch.setattr(inference, "free_device_bytes", lambda device: 40 * per_image)
    assert inference.many_forwards_batch(net, sample, None) == 20  # half the free memory
    assert inference.many_forwards_batch(net, sample, 8) == 8  # never above the cap
    monkeypatch.setattr(inference, "free_device_bytes", lambda device: 10**12)
    assert inference.many_forwards_batch(net, sample, None) == 256
    monkeypatch.undo()
    assert inference.many_forwards_batch(net, sample, None) == 16  # the CPU's default


def test_road_imputation_reads_its_residual_every_few_steps(monkeypatch):
    from vistool.evaluate import faithfulness

    images = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    removed = torch.zeros(1, 1, 24, 24, dtype=torch.bool)
    removed[..., 6:18, 6:18] = True
    reads = []
    to_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or to_bool(t))
    steps = []
    conv2d = faithfulness.F.conv2d
    monkeypatch.setattr(faithfulness.F, "conv2d", lambda *a, **k: steps.append(1) or conv2d(
        *a, **k))
    faithfulness._solve(images, removed, 1e-5)
    assert len(steps) > 3 * faithfulness._CHECK_EVERY  # many steps, few reads
    assert len(reads) <= len(steps) / faithfulness._CHECK_EVERY + 4


# --- reading the code ------------------------------------------------------------------------


def _library_files():
    return sorted((ROOT / "vistool").rglob("*.py"))


def test_no_float64_on_a_tensor_that_may_live_on_mps():
    """MPS has no float64: ``.double()`` only on ``.cpu()`` results or CPU constants."""
    offenders = []
    for path in _library_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "double"):
                continue
            receiver = node.func.value
            on_cpu = (isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute)
                      and receiver.func.attr == "cpu")
            constant = isinstance(receiver, ast.Name) and receiver.id.isupper()
            if not (on_cpu or constant):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_ablation_cam_indexes_with_tensors_on_the_activations_device():
    source = (ROOT / "vistool/explainers/cam.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "arange"):
            assert any(k.arg == "device" for k in node.keywords), node.lineno
