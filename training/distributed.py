"""Distributed training helpers: torchrun env init (NCCL on GPU, gloo on CPU), per-rank sharding, rank-0 helpers.

Launch with e.g. ``torchrun --nproc_per_node 2 -m sfdeploy train ...``: every process runs the same command; the
trainer calls `init_from_env()`, which does nothing when WORLD_SIZE is unset or 1.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env(device: str = "auto", timeout_minutes: float = 60.0) -> DistInfo:
    """Initialise the default process group from torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Backend: NCCL when training on CUDA, gloo otherwise. Returns a single-process DistInfo without torchrun.
    The timeout covers rank 0 evaluating or estimating priors while the others wait in a barrier (NCCL's default
    10 minutes kills every rank during a COCO-sized evaluation); NCCL also gets this rank's device_id, so its
    communicator is bound to the right GPU at once.
    """
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda and dist.is_nccl_available() else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), False)
    kwargs: dict[str, Any] = {"timeout": timedelta(minutes=timeout_minutes)}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank, world, local_rank, backend, True)


def rank_device(name: str, info: DistInfo, cuda_available: bool) -> torch.device:
    """The device of this process. Under torchrun (more than one rank) every CUDA request means cuda:LOCAL_RANK:
    one GPU per rank (choose GPUs with CUDA_VISIBLE_DEVICES), never every rank on the `cuda:N` given."""
    if name == "auto":
        name = "cuda" if cuda_available else "cpu"
    if not name.startswith("cuda"):
        return torch.device(name)
    if not cuda_available:
        from sfdeploy.config import ConfigError

        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if info.enabled:
        if name not in ("cuda", f"cuda:{info.local_rank}") and info.is_main:
            warnings.warn(f"--device {name} under torchrun: each rank uses cuda:LOCAL_RANK (select GPUs with "
                          "CUDA_VISIBLE_DEVICES)", RuntimeWarning, stacklevel=2)
        return torch.device("cuda", info.local_rank)
    return torch.device(name) if ":" in name else torch.device("cuda", torch.cuda.current_device())


def sync_batchnorm(model: torch.nn.Module, info: DistInfo, device: torch.device) -> int:
    """Convert trainable BatchNorm layers to SyncBatchNorm when more than one CUDA rank trains (random-init
    backbones train their BN; per-rank statistics of a few images are noisy). FrozenBatchNorm2d and BN layers
    whose affine parameters are frozen stay as they are. Returns the number of converted layers."""
    if not info.enabled or device.type != "cuda":  # SyncBatchNorm needs CUDA (NCCL) tensors
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and \
                    not isinstance(child, torch.nn.SyncBatchNorm) and \
                    any(p.requires_grad for p in child.parameters(recurse=False)):
                setattr(parent, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
                count += 1
    return count


def cleanup(info: DistInfo) -> None:
    if info.enabled and info.initialized_here and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(info: DistInfo, obj: Any, src: int = 0) -> Any:
    """The object of rank `src` on every rank (pickled; small objects only)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def average_floats(info: DistInfo, values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of scalar values over ranks (NaN on any rank stays NaN: every rank sees a divergence together)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= info.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def any_flag(info: DistInfo, flag: bool, device: torch.device) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class InfiniteSampler(torch.utils.data.Sampler[int]):
    """An endless, exactly resumable stream of data set indices, sharded over ranks like DistributedSampler.

    The global stream is the concatenation of per-epoch permutations (epoch e shuffled with seed + e). Global step s
    consumes stream positions [s*B, (s+1)*B) for global batch B; rank r takes the positions p with p % W == r
    (so each rank gets B/W samples per step). Starting at `start` (a global position, = step * B) reproduces the
    same samples a straight run would have seen: the sampler's state is just the step.

    Yields (index, sample_seed) pairs: the sample seed makes random augmentation a function of the stream position,
    so data is identical after resuming whatever the number of DataLoader workers.
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        self.size = size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start = int(start)

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self):  # type: ignore[no-untyped-def]
        pos = self.start
        # first position >= start that belongs to this rank
        pos += (self.rank - pos) % self.world_size
        epoch = pos // self.size
        order = self._epoch_order(epoch)
        while True:
            e, i = divmod(pos, self.size)
            if e != epoch:
                epoch, order = e, self._epoch_order(e)
            yield (order[i], (self.seed * 1_000_003 + pos) % (2**63 - 1))
            pos += self.world_size

    def __len__(self) -> int:  # pragma: no cover - infinite; DataLoader only needs it for warnings
        return 2**62


class SeededSamples(torch.utils.data.Dataset):
    """Wraps a data set: item (index, seed) -> dataset[index] with torch's RNG seeded by `seed` for its transforms.

    The global RNG of the calling process is left as it was (fork_rng), so resuming is exact.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]):  # type: ignore[no-untyped-def]
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device, find_unused_parameters: bool):
    """DDP around `model` (already on `device`); identity in a single process."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    kwargs: dict[str, Any] = {"find_unused_parameters": find_unused_parameters}
    if device.type == "cuda":
        kwargs["device_ids"] = [device.index if device.index is not None else info.local_rank]
    return DDP(model, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)
