# mypy: disable-error-code="no-untyped-call"
"""``HostReads``: counts the reads of tensor values on the host, for tests and benchmarks."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Counts, inside its ``with`` block, the operations that copy tensor values to the host:
    ``.item()``, ``int()``, ``float()``, ``bool()`` (``_local_scalar_dense``) and ``nonzero``
    at the dispatch level, and ``tolist()`` and ``numpy()``, which never reach dispatch, at
    the torch-function level. On an accelerator each is a synchronization."""

    READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._lists = _ListReads(self)

    def __enter__(self) -> HostReads:
        self._lists.__enter__()
        return super().__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._lists.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


class _ListReads(TorchFunctionMode):
    READS = (torch.Tensor.tolist, torch.Tensor.numpy)

    def __init__(self, owner: HostReads) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.owner.count += func in self.READS
        return func(*args, **(kwargs or {}))


__all__ = ["HostReads"]
