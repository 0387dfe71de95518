"""NVlabs/RADIO's ``radio.utils`` (rank helpers its examples import), for scripts written for RADIO. Outside
``torch.distributed`` they are rank 0 of 1 and barriers do nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.distributed as dist

__all__ = ["barrier", "get_rank", "get_world_size", "rank_gate"]


def get_rank(group: dist.ProcessGroup | None = None) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def get_world_size(group: dist.ProcessGroup | None = None) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def barrier(group: dist.ProcessGroup | None = None) -> None:
    if dist.is_initialized():
        dist.barrier(group)


class rank_gate:  # RADIO's name
    """Rank 0 first, then the other ranks (e.g. to fill a download cache once): a decorator, or
    ``with rank_gate():``."""

    def __init__(self, func: Callable[..., Any] | None = None) -> None:
        self.func = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.func is None:
            raise TypeError("rank_gate() without a function is a context manager: use `with rank_gate():`")
        rank = get_rank()
        result = self.func(*args, **kwargs) if rank == 0 else None
        barrier()
        if rank > 0:
            result = self.func(*args, **kwargs)
        return result

    def __enter__(self) -> None:
        if get_rank() > 0:
            barrier()

    def __exit__(self, *exc: object) -> None:
        if get_rank() == 0:
            barrier()
