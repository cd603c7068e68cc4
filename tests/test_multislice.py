"""The multislice device mesh (`mesh.dcn_data`) on fake devices vs the layout written out here.

Reference: two v5p-16 slices of 8 chips (2x2x2 torus coordinates, slice_index 0/1, 4 chips per
host) and two 4-GPU nodes without a slice index: the data axis must run across slices (nodes)
and every other axis stay inside one, with the context axis between torus neighbours.
"""
import dataclasses
import itertools

import numpy as np
import pytest

from shotstream_jax import sharding


@dataclasses.dataclass(frozen=True)
class FakeTpu:
    id: int
    coords: tuple
    slice_index: int
    process_index: int
    core_on_chip: int = 0
    platform: str = "tpu"
    device_kind: str = "TPU v5"


@dataclasses.dataclass(frozen=True)
class FakeGpu:  # no slice_index attribute (multi-process CPU devices report slice 0 on every device)
    id: int
    process_index: int
    platform: str = "gpu"
    device_kind: str = "NVIDIA H100 80GB HBM3"


def _v5p_slices(n: int = 2):
    chips = list(itertools.product(range(2), range(2), range(2)))
    return [FakeTpu(8 * s + i, (x, y, z), s, 2 * s + i // 4) for s in range(n) for i, (x, y, z) in enumerate(chips)]


def test_data_axis_spans_tpu_slices():
    # Listed out of order (slices interleaved, chips shuffled): the layout must come from the coordinates.
    devices = [_v5p_slices()[i] for i in np.random.default_rng(0).permutation(16)]
    grid = sharding.device_grid(dict(data=2, fsdp=4, context=2, tensor=1, dcn_data=2), devices)
    assert grid.shape == (2, 4, 2, 1)
    for s in range(2):
        assert {d.slice_index for d in grid[s].ravel()} == {s}
        assert sorted(d.id for d in grid[s].ravel()) == list(range(8 * s, 8 * s + 8))
    # Context pairs are torus neighbours (one coordinate apart) inside their slice.
    for d, f in itertools.product(range(2), range(4)):
        a, b = grid[d, f, 0, 0].coords, grid[d, f, 1, 0].coords
        assert sum(abs(i - j) for i, j in zip(a, b)) == 1, (a, b)
    # Four data shards: two per slice, still never a non-data axis across slices.
    grid = sharding.device_grid(dict(data=4, fsdp=2, context=2, tensor=1, dcn_data=2), devices)
    assert [{d.slice_index for d in grid[i].ravel()} for i in range(4)] == [{0}, {0}, {1}, {1}]


def test_devices_in_one_slice_take_processes_as_slices():
    devices = [FakeGpu(i, i // 4) for i in range(8)]
    grid = sharding.device_grid(dict(data=2, fsdp=2, tensor=2, dcn_data=2), devices)
    assert [sorted(d.id for d in grid[i].ravel()) for i in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_dcn_data_must_match_the_slices():
    with pytest.raises(ValueError, match="dcn_data=4 but the devices span 2 slices"):
        sharding.device_grid(dict(data=4, fsdp=4, dcn_data=4), _v5p_slices())
    with pytest.raises(ValueError, match="multiple of mesh.dcn_data"):
        sharding.device_grid(dict(data=3, fsdp=1, dcn_data=2), [FakeGpu(i, i // 2) for i in range(3)])
