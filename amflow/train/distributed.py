"""One entry point for single-process and ``torchrun`` training.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised from the
environment: gloo on CPU, NCCL on CUDA. Everything else in the trainer asks a :class:`DistContext`
whether it is the main process (rank 0), which alone writes files and talks to MLflow.
"""
from __future__ import annotations

import datetime
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from amflow.errors import AmflowError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ collectives (no-ops alone)
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few scalars over ranks (float64 so that counts and sums stay exact)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (small picklable values: decisions, errors, ids)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @property
    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo only CPU tensors.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised_here = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise AmflowError(f"environment variable {name}={value!r} is not an integer "
                          "(set by torchrun; do not set it by hand)") from None


# Oldest NVIDIA driver each CUDA major version of a torch wheel runs on (minor-version compatibility).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def nvidia_driver_version(proc_file: Path = Path("/proc/driver/nvidia/version")) -> Optional[str]:
    """The loaded NVIDIA kernel driver's version (Linux), or None when there is none."""
    try:
        text = Path(proc_file).read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9]+\.[0-9.]+)", text)
    return match.group(1) if match else "unknown"


def cuda_facts() -> str:
    """What the installed torch wheel needs and what this machine has, for an unusable-CUDA message."""
    wheel_cuda = torch.version.cuda
    if wheel_cuda is None:
        wheel = f"the installed torch {torch.__version__} is a CPU-only build"
    else:
        need = MIN_DRIVER.get(int(wheel_cuda.split(".")[0]))
        wheel = f"the installed torch {torch.__version__} is built for CUDA {wheel_cuda}" + (
            f" (NVIDIA driver {need} or newer)" if need else "")
    driver = nvidia_driver_version()
    here = f"this machine's NVIDIA driver is {driver}" if driver else "this machine has no NVIDIA driver loaded"
    return f"{wheel}; {here}"


def resolve_device(preference: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a usable GPU fails at once, naming why."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise AmflowError(f"train.device is 'cuda' but CUDA is unusable: {cuda_facts()}. Run on a GPU node, install "
                          "a torch build for this driver (README, 'GPUs and clusters'), or set train.device: auto "
                          "or cpu in the params file (--set train.device=cpu)")
    if nvidia_driver_version() is not None:  # a GPU machine whose CUDA does not work: say so, do not hide it
        print(f"warning: train.device is 'auto' and an NVIDIA driver is loaded, but CUDA is unusable "
              f"({cuda_facts()}): running on the CPU", file=sys.stderr)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto", timeout_s: Optional[float] = None) -> DistContext:
    """Read torchrun's environment, pick the device, and join the process group when WORLD_SIZE > 1."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    device = resolve_device(device_preference)
    if device.type == "cuda":
        if world > 1:
            if local_rank >= torch.cuda.device_count():
                raise AmflowError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                                  "start torchrun with --nproc_per_node <= the number of GPUs")
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                      device=device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {}
        if timeout_s is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
        ctx.initialised_here = True
    return ctx


def per_process_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise AmflowError(f"train.batch_size {global_batch} is not divisible by the {world_size} processes: "
                          f"choose a batch size that is a multiple of the world size (nproc_per_node x nodes)")
    return global_batch // world_size
