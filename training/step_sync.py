"""Host syncs only on the steps that need values: logging, checkpoints, evaluation, the early-median window.

Why: reading a loss (`float(t)`), all-reducing a list or `float(grad_norm)` each step stalls the CPU until the GPU
has finished the step, so the next step cannot be queued meanwhile. Between reads, `DeferredChecks` watches the
loss terms and the gradient norm on the device and remembers the first step with a non-finite value; the next
read reports it, and the run stops as diverged at that step. Checkpoints are only written on read steps after
that check, so the last checkpoint is still the last good one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import distributed as D

NONE = 2**62  # "no bad step" (min-reduced over ranks)


def is_read_step(step: int, *, total_steps: int, log_every: int, checkpoint_every: int, eval_every: int | None,
                 early_needed: bool, stop_at: int | None) -> bool:
    """Must the host read this step's values (1-based step being made)?"""
    return (early_needed or step == 1 or step == total_steps or step % log_every == 0
            or step % checkpoint_every == 0 or bool(eval_every and step % eval_every == 0)
            or (stop_at is not None and step >= stop_at))


class DeferredChecks:
    """First non-finite loss term (or gradient norm) since the last read, tracked without a host sync."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] | None = None
        self.first_bad = torch.full((), NONE, dtype=torch.int64, device=device)
        self.bad_terms: torch.Tensor | None = None

    def watch(self, step: int, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor | None) -> None:
        names = sorted(losses) + (["grad_norm"] if grad_norm is not None else [])
        values = [losses[k].detach().float().reshape(()) for k in sorted(losses)]
        if grad_norm is not None:
            values.append(grad_norm.detach().float().reshape(()))
        bad = ~torch.isfinite(torch.stack(values))
        if self.names != names:  # first watch since a read (or the terms changed): start a fresh record
            if self.bad_terms is not None:
                raise RuntimeError(f"loss terms changed between reads: {self.names} -> {names}")
            self.names = names
            self.bad_terms = torch.zeros_like(bad)
        newly = bad.any() & (self.first_bad == NONE)
        self.first_bad = torch.where(newly, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad_terms = torch.where(newly, bad, self.bad_terms)

    def read(self, info: D.DistInfo) -> tuple[int, str] | None:
        """(step, term) of the first non-finite value on any rank since the last read, or None; resets.
        Every rank must call it on the same steps (a collective under DDP)."""
        first = self.first_bad.clone()
        if info.enabled:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = int(first)  # the one host sync
        result = None
        if step != NONE:
            mine = int(self.first_bad) == step and self.bad_terms is not None
            terms = [n for n, b in zip(self.names or [], (self.bad_terms.tolist() if mine else [])) if b]
            if info.enabled:
                terms = sorted({t for ts in D.all_gather_object(info, terms) for t in ts})
            result = (step, terms[0] if terms else "loss")
        self.names, self.bad_terms = None, None
        self.first_bad.fill_(NONE)
        return result
