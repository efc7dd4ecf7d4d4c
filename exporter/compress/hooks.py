"""Forward hooks for the length of some forward passes: what the steps use to see which layers
run, and what goes in and out of them, on real inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def forward_hooks(pairs: Iterable[tuple[object, Callable]]) -> Iterator[None]:
    """(module, hook) pairs attached while the block runs, without gradients; removed afterwards
    even when a forward pass fails, so a failed measurement leaves no hook on the student."""
    import torch

    handles = [module.register_forward_hook(hook) for module, hook in pairs]
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()
