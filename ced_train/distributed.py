"""Small torch.distributed helpers for scripts started with ``torchrun`` (or plainly).

``torchrun --nproc_per_node R script.py`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them and joins the process group (gloo
on CPU, nccl on CUDA). Without them it returns a one-process :class:`DistInfo` and every helper
below degrades to a no-op, so the same code runs with and without torchrun.

When one process fails, the others fail in their next collective ("Connection closed by peer"):
:func:`peer_failure` recognises that error, and :func:`report_failure` records the first
process's own error for torchrun's summary, so its "Root Cause" is that error, not a peer's.

Example:
    >>> dist_info = setup("cpu")
    >>> if dist_info.is_main:
    ...     print("only once")
    >>> barrier()
    >>> cleanup()
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "barrier", "broadcast_object", "cleanup", "gather_object", "is_distributed",
           "await_root_cause", "peer_failure", "report_failure", "setup"]

# What a collective raises (gloo, NCCL) when another process of the group has died.
_PEER_FAILURES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                  "NCCL communicator was aborted", "remote process exited")
# torchrun's summary names the failure with the earliest timestamp, in whole seconds, as the root
# cause: the failing process waits this long before it exits (and so before the others fail).
_ROOT_CAUSE_MARGIN_S = 1.1
# A process that only saw another one fail waits this long before it exits: the failing process
# may lose the connection first (its sockets close as its error unwinds) and still be writing its
# error, and torchrun records only the processes that ended before it stops the others.
_PEER_GRACE_S = 5.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that does the one-off work (create files, print)."""
        return self.rank == 0


def is_distributed() -> bool:
    """Return True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: str | torch.device = "cpu") -> DistInfo:
    """Join the torchrun process group if the environment names one; pick this rank's device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or a specific device. Under torchrun, ``"cuda"`` becomes
            ``cuda:LOCAL_RANK`` and the backend is nccl; on CPU it is gloo.

    Returns:
        This process's :class:`DistInfo` (rank 0 of 1 when not started by torchrun).

    Raises:
        ValueError: WORLD_SIZE is set but RANK is missing, or they are inconsistent.

    Example:
        >>> setup("cpu").world_size   # plain python: no process group
        1
    """
    device = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(0, 1, 0, device)
    if "RANK" not in os.environ:
        raise ValueError(f"WORLD_SIZE={world_size} is set but RANK is not; start with torchrun")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not 0 <= rank < world_size:
        raise ValueError(f"expected 0 <= RANK < WORLD_SIZE={world_size}, got RANK={rank}")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank, world_size, local_rank, device)


def barrier() -> None:
    """Wait for every process of the group; a no-op without one."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (picklable objects); identity without a group.

    Example:
        >>> error = broadcast_object(check_something() if dist_info.is_main else None)
    """
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_object(obj: Any, dst: int = 0) -> list[Any]:
    """Every rank's ``obj`` (picklable) in rank order on rank ``dst``, ``[]`` on the others;
    ``[obj]`` without a group.

    Example:
        >>> for batch in gather_object(my_batch):  # rank 0 writes every rank's batch
        ...     write(batch)
    """
    if not is_distributed():
        return [obj]
    rank = dist.get_rank()
    holder = [None] * dist.get_world_size() if rank == dst else None
    dist.gather_object(obj, holder, dst=dst)
    return holder if rank == dst else []


def cleanup() -> None:
    """Leave the process group (if one was joined); call at the end of a torchrun script."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def peer_failure(error: BaseException) -> str | None:
    """What ``error`` says happened (e.g. "Connection closed by peer") when it is a collective's
    report that another process of the torchrun job died, whose own error is the one to show;
    else None.

    Example:
        >>> peer_failure(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:2549"))  # doctest: +SKIP
        'Connection closed by peer'
    """
    text = str(error)
    return next((found for found in _PEER_FAILURES if found in text), None) if _under_torchrun() else None


def report_failure(message: str) -> None:
    """Under torchrun, record ``message`` as this process's error for torchrun's failure summary
    (its ``TORCHELASTIC_ERROR_FILE``), then wait a second so that it is the job's root cause:
    the other processes fail only once this one has exited. A no-op without torchrun.

    Example:
        >>> report_failure("ced-train: error: c6.wav: non-finite audio")  # doctest: +SKIP
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not (_under_torchrun() and path):
        return
    timestamp = str(int(time.time()))
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": timestamp}}},
                  fh)
    time.sleep(_ROOT_CAUSE_MARGIN_S)


def await_root_cause() -> None:
    """Under torchrun, give the process that failed first time to report its error and exit, so
    that it, not this one, is the job's root cause (torchrun stops this process meanwhile).

    Example:
        >>> await_root_cause()  # after reporting "stopped because another process failed"  # doctest: +SKIP
    """
    if _under_torchrun():
        time.sleep(_PEER_GRACE_S)
