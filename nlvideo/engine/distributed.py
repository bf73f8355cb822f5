"""Process-group setup and small collective helpers.

Launch modes, checked in this order by :func:`init_distributed`:

* ``torchrun`` (single or multi-node): ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` are set,
  we initialise from ``env://``.
* hydra-submitit-launcher on SLURM with several tasks: submitit starts one process per task via
  ``srun``; :class:`submitit.helpers.TorchDistributedEnvironment` translates the SLURM variables.
* otherwise a single process, no process group.

The backend is ``nccl`` when every process of a node can have a GPU of its own and ``gloo`` otherwise
(:func:`backend_for`): on CPU, and with more processes than GPUs, e.g. two ranks sharing one GPU (nccl
refuses two ranks on one device; gloo all-reduces CUDA tensors too, SyncBatchNorm included). Every
helper below also works without a process group (world size 1), so the training loop never branches on
it.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _under_submitit_slurm() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def backend_for(device: str, local_world_size: int, num_gpus: int) -> str:
    """The process-group backend for ``trainer.device=device`` (auto | cpu | cuda) with
    ``local_world_size`` processes on this node and ``num_gpus`` GPUs visible to each of them.

    nccl needs one GPU per process; with fewer GPUs than processes (:func:`cuda_index` then gives
    several ranks one GPU) only gloo works. Every rank of a node computes the same answer.
    """
    if device == "cpu" or num_gpus == 0:
        return "gloo"
    return "nccl" if local_world_size <= num_gpus else "gloo"


def cuda_index(local_rank: int, num_gpus: int) -> int:
    """The GPU of the process with ``local_rank``: its own, or a shared one when there are fewer GPUs
    than processes on the node (round robin)."""
    return local_rank % num_gpus


def init_distributed(timeout_min: float = 30.0, device: str = "auto") -> DistInfo:
    """Initialise the default process group if launched with several processes; idempotent.

    ``device`` is ``trainer.device``: with ``cpu`` the group is gloo even where CUDA is available.
    """
    if dist.is_available() and dist.is_initialized():
        return info()
    if "RANK" not in os.environ and _under_submitit_slurm():
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export()  # sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if "TORCHELASTIC_RUN_ID" in os.environ:
        stop_with_launcher()
    num_gpus = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0
    # LOCAL_WORLD_SIZE: set by torchrun and by submitit's export above.
    backend = backend_for(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), num_gpus)
    if num_gpus:
        torch.cuda.set_device(cuda_index(local_rank, num_gpus))
    timeout = datetime.timedelta(minutes=timeout_min)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        return info()
    # Under torchrun, the workers of every restart attempt share the agent's store. Without a prefix of
    # their own, restarted gloo workers read the previous attempt's (dead) peer addresses and fail with
    # "connectFullMesh ... Connection refused", so --max-restarts could never recover a job.
    rank = int(os.environ["RANK"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent_store and rank == 0, timeout=timeout,
                          multi_tenant=not agent_store)
    store = dist.PrefixStore(f"nlvideo/attempt_{restart}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return info()


def stop_with_launcher() -> None:
    """Have the kernel send this worker SIGTERM when its torchrun agent dies (Linux ``PR_SET_PDEATHSIG``).

    A SIGKILLed launcher cannot forward anything, and its workers would train on, orphaned, to the end
    of the run; with SIGTERM they take the preemption path instead: every rank receives it, so they
    agree on the next iteration boundary, checkpoint and exit."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=dist.get_backend(),
    )


def get_rank() -> int:
    return info().rank


def get_world_size() -> int:
    return info().world_size


def is_main_process() -> bool:
    return get_rank() == 0


def env_rank() -> int:
    """The rank from the launcher's environment, readable before the process group exists."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ and (key == "RANK" or _under_submitit_slurm()):
            return int(os.environ[key])
    return 0


_TRANSPORT_ERRORS = ("timed out", "timeout", "connection closed", "connection reset", "pair closure", "gloo",
                     "nccl", "processgroup")


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed collective (a peer died, stopped or stalled past the group's
    timeout): torch raises :class:`torch.distributed.DistError` or, from gloo's transport, a plain
    RuntimeError naming it."""
    if isinstance(exc, dist.DistError):
        return True
    return (isinstance(exc, RuntimeError) and dist.is_available() and dist.is_initialized()
            and any(marker in str(exc).lower() for marker in _TRANSPORT_ERRORS))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (a new tensor on the tensor's original device)."""
    if get_world_size() == 1:
        return tensor.clone()
    out = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(tensor) / get_world_size()






def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable object from ``src`` to every rank (identity without a group)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
