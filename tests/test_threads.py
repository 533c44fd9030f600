"""The equality claims with more than one thread: the suite runs single-threaded (one thread
per xdist worker, ``OMP_NUM_THREADS=1`` for its subprocesses), users run with every core.
Seeded results that are claimed bit-identical (or batch-independent), a killed training run
that resumes to the same weights and DDP that matches one process are checked again here with
two threads in-process and ``OMP_NUM_THREADS=2`` in the subprocesses; the streamed runs' resume
and torchrun claims are parametrised over the thread count in ``tests/test_streaming.py``.

The in-process claims and DDP are the other test modules' own tests, called with the threads
changed (one definition of each claim); the training resume is tests/test_trainers.py's,
shortened.
"""

from __future__ import annotations

import importlib

import pytest
import torch

THREADS = 2


@pytest.fixture
def threads():
    """Two intra-op threads in this process for the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    assert torch.get_num_threads() == THREADS
    yield THREADS
    torch.set_num_threads(before)


@pytest.mark.parametrize("claim", [
    "test_attribution.test_smoothgrad_is_seeded",
    "test_deepdream.test_same_seed_same_dream_and_another_seed_another",
    "test_featureviz.test_images_depend_only_on_their_own_generator",
    "test_featureviz.test_render_filters_is_seeded_and_batch_independent",
    "test_style.test_lbfgs_and_adam_run_and_the_seed_fixes_the_image",
    "test_layouts.test_explain_inside_no_grad_gives_the_same_maps",
])
def test_bit_identity_claims_hold_with_two_threads(threads, claim):
    module, name = claim.split(".")
    getattr(importlib.import_module(module), name)()
    assert torch.get_num_threads() == threads


@pytest.fixture
def trainers_with_threads(monkeypatch):
    """tests/test_trainers.py with its subprocesses on two OpenMP threads each."""
    module = importlib.import_module("test_trainers")
    monkeypatch.setattr(module, "ENV", {**module.ENV, "OMP_NUM_THREADS": str(THREADS)})
    return module


def test_ddp_matches_one_process_with_two_threads_each(trainers_with_threads, tmp_path):
    trainers_with_threads.test_ddp_two_processes_match_one(tmp_path)


def test_killed_training_resumes_to_the_same_weights_with_two_threads(trainers_with_threads,
                                                                     tmp_path):
    """tests/test_trainers.py's resume claim, shorter (3 epochs of larger batches)."""
    trainers_with_threads.killed_run_resumes_to_the_same_weights(tmp_path, epochs=3,
                                                                 batch_size=64, pause=0.1)
