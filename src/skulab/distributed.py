"""One training cell on several processes: torchrun re-launch, the process group, rank helpers.

A cell with `world_size: 1` (the default) never touches torch.distributed: it is the plain
single-process run. With `world_size: N > 1` the stage script re-launches itself as
`python -m torch.distributed.run --standalone --nproc_per_node=N <script> <args>` (so the DVC stage
command stays the same), and each of the N processes joins one process group (`gloo` on CPU,
`nccl` on CUDA, one GPU per process). Rank 0 alone talks to MLflow and writes the cell's files.
"""

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as torch_dist

from skulab.errors import SkulabError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # set by torch.distributed.run in every process it starts


@dataclass(frozen=True)
class Ranks:
    """This process's place in the cell: rank 0 of 1 for a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when the cell runs on several processes (a process group exists)."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The process that logs to MLflow and writes checkpoints and metrics."""
        return self.rank == 0

    def gather(self, obj: Any) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        objects: list = [None] * self.world_size
        torch_dist.all_gather_object(objects, obj)
        return objects

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.enabled:
            return list(values)
        device = torch.device("cuda", self.local_rank) if torch_dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


SINGLE = Ranks()


def launched() -> bool:
    """True inside a process started by torchrun (torch.distributed.run)."""
    return all(key in os.environ for key in TORCHRUN_ENV)


def _check_launch(world_size: int) -> None:
    if launched() and int(os.environ["WORLD_SIZE"]) != world_size:
        raise SkulabError(
            f"world_size: params say {world_size} process(es) per cell but torchrun started {os.environ['WORLD_SIZE']}; "
            "run the stage script with plain python (it starts torchrun itself) or match --nproc_per_node"
        )


def torchrun_command(world_size: int, argv: list[str] | None = None) -> list[str]:
    """The command that runs this script (argv, default sys.argv) again on `world_size` processes."""
    argv = sys.argv if argv is None else argv
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}", *argv]


def relaunch(world_size: int, argv: list[str] | None = None) -> int | None:
    """Re-run the calling script under torchrun when world_size > 1 and it is not already; its exit code.

    None means: carry on in this process (world_size 1, or already one of torchrun's processes).
    """
    _check_launch(world_size)
    if world_size <= 1 or launched():
        return None
    return subprocess.call(torchrun_command(world_size, argv))


def backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(world_size: int, device_type: str) -> Iterator[Ranks]:
    """Join the cell's process group for its duration; world_size 1 yields SINGLE and does nothing at all."""
    if world_size <= 1:
        _check_launch(1)
        yield SINGLE
        return
    if not launched():
        raise SkulabError(
            f"world_size: {world_size} processes need torchrun; run the stage script with plain python "
            f"(it re-launches itself) or `torchrun --standalone --nproc_per_node={world_size} <script> ...`"
        )
    _check_launch(world_size)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        if torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", world_size)):
            raise SkulabError(f"world_size: {world_size} processes on cuda need one GPU each; {torch.cuda.device_count()} visible")
        torch.cuda.set_device(local_rank)
    torch_dist.init_process_group(backend(device_type))
    try:
        yield Ranks(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank)
        torch_dist.barrier()  # rank 0 finishes the cell (test, files, MLflow) while the others wait
    finally:
        torch_dist.destroy_process_group()

