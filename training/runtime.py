"""What a training run needs from its process and device: the device, memory use, RNG states (saved in
checkpoints for exact resume), the guides' last values and a weights digest (ranks must agree)."""

from __future__ import annotations

import hashlib
import os
import random
import resource
import sys
from typing import Any

import numpy as np
import torch

from sfdeploy.sampling_free import FrozenGuidedLoss, GuidedLossScaling

from . import distributed as D


def resolve_device(name: str, info: D.DistInfo) -> torch.device:
    """Under torchrun each rank uses cuda:LOCAL_RANK (distributed.rank_device)."""
    return D.rank_device(name, info, torch.cuda.is_available())


def memory_mb(device: torch.device) -> float:
    """Current RSS on CPU; CUDA max allocated on GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_memory_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak RSS on CPU; CUDA max allocated on GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux


def rng_state(device: torch.device) -> dict[str, Any]:
    """RNG states as tensors/lists only, so the checkpoint loads with torch.load(weights_only=True)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": int(version), "state": [int(x) for x in mt], "gauss": gauss},
        "numpy": {"name": str(np_name), "keys": [int(x) for x in np_keys], "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what rng_state saved (resume continues the exact random stream)."""
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def guide_values(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """{module name: {g, delta | sigma_*, loss_cls_raw, loss_loc}} of every guide after a training forward."""
    out = {}
    for name, m in D.unwrap(model).named_modules():
        if isinstance(m, (GuidedLossScaling, FrozenGuidedLoss)) and m.last:
            out[name] = {k: float(v) for k, v in m.last.items()}
    return out


def weights_digest(model: torch.nn.Module) -> str:
    """Hash of the parameters (not buffers: BatchNorm running stats are per rank; DDP re-broadcasts rank 0's)."""
    h = hashlib.sha256()
    for name, t in sorted(D.unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Say:
    """Human-readable lines to stderr on rank 0 (through tqdm when a bar is active)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)
