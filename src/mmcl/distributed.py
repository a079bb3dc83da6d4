"""Data-parallel training with torch.distributed, started by torchrun: the process group and
every collective operation of a run.

``torchrun --nproc_per_node=N -m mmcl run PRESET`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; the engine then joins a process group (``from_env``: nccl on GPUs,
gloo on CPU) and hands the resulting ``Dist`` to the method. ``Dist``'s methods are the only
collectives of the package (no other module imports torch.distributed); in a single process
they are no-ops that return their input.

Who calls what (docs/resume_and_distributed.md has the reasoning):

- mmcl.parallel, behind ``Method.forward_batch`` / ``Method.infer``: each rank runs the model
  on its contiguous slice of a batch's rows (``shard_bounds``); the outputs are gathered
  (``gather_rows``, differentiable; ``gather_rows_nograd`` for inference), the gate
  statistics summed (``sum_across``, differentiable) and the expert-usage counts summed
  (``all_sum_``), so every rank computes the loss of the whole batch. The routing noise is
  drawn for the whole batch on every rank and sliced.
- the engine: ``sync_gradients`` sums the parameter gradients after the backward pass (each
  rank back-propagated into its own rows only: the sum is the single-process gradient, up to
  floating-point summation order); evaluation counts are summed (``all_sum_``); rank 0 reads
  checkpoints and sends them (``broadcast_bytes``); decisions one rank makes are shared
  (``all_ok``, ``all_max_int``); after every task the ranks compare a weight checksum
  (``min_max``); ``barrier`` and ``destroy`` around the run. Only rank 0 writes files.

``train.batch_size`` and ``memory.batch_size`` are global: every rank draws the same batch
indices (same seeds, same generators). We sum gradients by hand rather than wrapping the model
in DistributedDataParallel: the loss is not a per-sample mean (DDP's averaging would be wrong),
unchosen and frozen experts would need ``find_unused_parameters``, and one flat all-reduce per
step is simple and deterministic.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False   # we called init_process_group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) --------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def all_sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def all_max_int(self, value: int, device) -> int:
        if not self.enabled:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.long, device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return int(t.item())

    def min_max(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(elementwise minimum, maximum) of ``t`` over ranks, as new tensors; (t, t) copies in a
        single process. Equal on every rank when the ranks agree (e.g. on a weight checksum)."""
        lo, hi = t.clone(), t.clone()
        if self.enabled:
            tdist.all_reduce(lo, op=tdist.ReduceOp.MIN)
            tdist.all_reduce(hi, op=tdist.ReduceOp.MAX)
        return lo, hi

    def all_ok(self, ok: bool, device) -> bool:
        """True when ``ok`` on every rank (for decisions one rank makes, e.g. a file write)."""
        return self.all_max_int(0 if ok else 1, device) == 0

    def broadcast_bytes(self, data: bytes | None, device) -> bytes:
        """Rank 0's bytes on every rank, as a uint8 tensor (no pickle)."""
        if not self.enabled:
            return data
        n = torch.tensor([len(data) if self.is_main else 0], dtype=torch.long, device=device)
        tdist.broadcast(n, src=0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if self.is_main
               else torch.empty(int(n.item()), dtype=torch.uint8, device=device))
        if int(n.item()):
            tdist.broadcast(buf, src=0)
        return bytes(buf.cpu().numpy().tobytes())

    def gather_rows(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's rows (rank order; rank r has sizes[r]) on every rank.
        Differentiable: the gradient of a rank's own rows flows back to it."""
        if not self.enabled:
            return x
        return _GatherRows.apply(x, sizes, self.rank)

    def gather_rows_nograd(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        if not self.enabled:
            return x
        with torch.no_grad():
            return _gather_padded(x.detach(), sizes)

    def sum_across(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over ranks, differentiable (each rank's gradient is the upstream one)."""
        if not self.enabled:
            return x
        return _SumAcross.apply(x)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum gradients over ranks with one flat all-reduce. A parameter that has no gradient
        on any rank keeps none (so the optimiser skips it, as a single process would)."""
        if not self.enabled or not params:
            return
        ref = params[0]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params]
                         + [torch.tensor([float(p.grad is not None) for p in params], device=ref.device)])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        has = flat[-len(params):]
        offset = 0
        for i, p in enumerate(params):
            n = p.numel()
            if has[i] > 0:
                g = flat[offset:offset + n].view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            else:
                p.grad = None
            offset += n

    def destroy(self) -> None:
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()
            self.owns_group = False


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous slice [start, end) of n rows for a rank; sizes differ by at most one."""
    base, rem = divmod(n, world_size)
    start = rank * base + min(rank, rem)
    return start, start + base + (1 if rank < rem else 0)


def shard_sizes(n: int, world_size: int) -> list[int]:
    return [e - s for s, e in (shard_bounds(n, world_size, r) for r in range(world_size))]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather needs equal shapes: pad every rank's rows to the largest, then trim."""
    m = max(sizes)
    pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
    parts = [x.new_empty((m, *x.shape[1:])) for _ in sizes]
    tdist.all_gather(parts, torch.cat([x, pad]).contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, rank):
        ctx.start = sum(sizes[:rank])
        ctx.n = sizes[rank]
        return _gather_padded(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad):
        # Every rank computes the same loss from the same gathered rows, so the upstream
        # gradient is the same everywhere: a rank's rows get their slice of it, unscaled.
        return grad[ctx.start:ctx.start + ctx.n], None, None


class _SumAcross(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.detach().clone()
        tdist.all_reduce(y, op=tdist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad


def from_env(device_name: str) -> tuple[Dist, str]:
    """Join the process group torchrun describes (if any). Returns the Dist and the device
    name this rank should use (cuda:LOCAL_RANK under nccl)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device_name
    local = int(os.environ.get("LOCAL_RANK", "0"))  # (the rank comes from the process group)
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"run.device={device_name}, but no CUDA device is available (use run.device=cpu)")
        torch.cuda.set_device(local)
        device_name = f"cuda:{local}"
    owns = False
    if not tdist.is_initialized():
        timeout = dt.timedelta(seconds=float(os.environ.get("MMCL_DIST_TIMEOUT_S", "1800")))
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
        owns = True
    if tdist.get_world_size() != world:
        raise RuntimeError(f"WORLD_SIZE={world} but the process group has {tdist.get_world_size()} ranks")
    return Dist(rank=tdist.get_rank(), world_size=world, local_rank=local, owns_group=owns), device_name
