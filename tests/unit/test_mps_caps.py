"""The caps of a user's MPS server on a GPU, from that user's slices there."""
from __future__ import annotations

from slurm_vgpu.mps import Caps
from slurm_vgpu.mps.slices import caps_of


def test_the_largest_slice_and_the_largest_memory_cap_bound_every_client():
    assert caps_of([(20, 4096), (50, 1024)]) == Caps(50, 4096)


def test_one_slice_without_a_memory_cap_leaves_the_server_uncapped():
    assert caps_of([(20, 4096), (10, None)]) == Caps(20, None)


def test_no_slice_no_caps():
    assert caps_of([]) is None
