"""Which process-group backend and GPU a rank gets (nlvideo.engine.distributed), as pure functions: the
GPU side (two ranks sharing one GPU over gloo) runs in tests/test_gpu.py."""

from __future__ import annotations

import pytest

from nlvideo.engine.distributed import backend_for, cuda_index


@pytest.mark.parametrize(
    ("device", "local_world_size", "num_gpus", "backend"),
    [
        ("auto", 8, 8, "nccl"),  # one GPU per process
        ("cuda", 2, 8, "nccl"),
        ("auto", 2, 1, "gloo"),  # two ranks on one GPU: nccl refuses, gloo takes CUDA tensors
        ("cuda", 16, 8, "gloo"),
        ("auto", 2, 0, "gloo"),  # no GPU
        ("cpu", 2, 8, "gloo"),  # trainer.device=cpu on a GPU machine: CPU tensors, which nccl refuses
    ],
)
def test_nccl_only_where_every_process_has_a_gpu_of_its_own(device, local_world_size, num_gpus, backend):
    assert backend_for(device, local_world_size, num_gpus) == backend


def test_ranks_share_gpus_round_robin_when_there_are_fewer_gpus():
    assert [cuda_index(r, 8) for r in range(8)] == list(range(8))
    assert [cuda_index(r, 1) for r in range(2)] == [0, 0]
    assert [cuda_index(r, 2) for r in range(4)] == [0, 1, 0, 1]
