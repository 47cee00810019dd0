"""Collectives that are identity functions outside a process group (safe in unit tests)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of `x` over ranks (a new tensor); `x` unchanged outside a process group."""
    if not is_dist():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of `x` over ranks; returns `x` unchanged outside a process group."""
    if not is_dist():
        return x
    return all_reduce_sum(x) / dist.get_world_size()


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate equally shaped tensors from every rank along dim 0 (rank order)."""
    if not is_dist():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out)


def all_gather_object(obj) -> list:
    """Python objects from every rank, in rank order."""
    if not is_dist():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_dist():
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP/FSDP/compile wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)
