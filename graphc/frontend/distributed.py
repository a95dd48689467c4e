"""Data-parallel training over MPI (`gc.distributed`): collectives inside the compiled step.

`allreduce(x, comm)` sums `x` over the ranks of an mpi4py communicator; compiled, it is one
call of `MPI_Allreduce` of the MPI library mpi4py loaded, inside the one native call of the
step (no Python round trip per step); interpreted, `comm.Allreduce`. `op="mean"` divides
the sum by the number of ranks. An optimizer given `allreduce=comm` averages all its
gradients in one fused buffer per step (one call, whatever the number of parameters):

    comm = MPI.COMM_WORLD                      # under mpiexec -n 2
    opt = gc.optim.Adam(model.params(), lr=1e-3, allreduce=comm)
    step = gc.compile(inputs=[x, y], outputs=loss, updates=opt.updates(loss))

Every rank must run the same steps in the same order (as with any MPI collective).
"""

from __future__ import annotations

from graphc.errors import GraphcError
from graphc.frontend.functions import concat
from graphc.frontend.tensor import Tensor, as_tensor
from graphc.ir.ops import COMMUNICATORS, apply

__all__ = ["allreduce", "average"]


def _handle(comm) -> int:
    """The communicator's MPI handle, remembered so that the interpreter can find it."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise GraphcError("gc.distributed needs mpi4py (pip install '.[mpi]')") from None
    if not isinstance(comm, MPI.Comm):
        raise GraphcError(f"allreduce: comm must be an mpi4py communicator, got {comm!r}")
    handle = int(MPI._handleof(comm))
    COMMUNICATORS[handle] = comm
    return handle


def allreduce(x, comm, op: str = "mean") -> Tensor:
    """`x` summed (`op="sum"`) or averaged (`op="mean"`) over the ranks of `comm`."""
    if op not in ("sum", "mean"):
        raise GraphcError(f"allreduce: op must be 'sum' or 'mean', got {op!r}")
    x = as_tensor(x)
    total = Tensor(apply("allreduce", x.node, comm=_handle(comm)))
    return total / comm.Get_size() if op == "mean" else total


def average(tensors: list[Tensor], comm) -> list[Tensor]:
    """Each tensor averaged over the ranks of `comm`, all in one allreduce (one buffer)."""
    if not tensors:
        return []
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:  # one buffer, one dtype: average each dtype's tensors together
        by_dtype = {d: [t for t in tensors if t.dtype == d] for d in dtypes}
        averaged = {d: iter(average(group, comm)) for d, group in by_dtype.items()}
        return [next(averaged[t.dtype]) for t in tensors]
    flat = allreduce(concat([t.reshape(-1) for t in tensors]), comm, "mean")
    result, start = [], 0
    for t in tensors:
        result.append(flat[start : start + t.size].reshape(t.shape))
        start += t.size
    return result
