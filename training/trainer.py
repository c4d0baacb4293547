"""The training loop: `train(cfg) -> TrainResult`.

Iteration-based (max_steps, or epochs converted to steps) over an endless, exactly resumable sampler; SGD+momentum
(paper lr, linearly scaled) or AdamW with warm-up and step decay; gradient clipping; AMP on CUDA; DDP under
torchrun; divergence detection; atomic checkpoints (OUT/last.pt, OUT/best.pt by bbox AP); OUT/metrics.jsonl,
OUT/config.yaml, OUT/result.json and loss-dynamics plots in OUT/plots/.

Outcomes: "completed"; "diverged" (a NaN/inf loss term or gradient, or the loss exploding past divergence_factor x
its early median: the run stops cleanly, the last good checkpoint is kept and marked); "interrupted" (Ctrl-C or
`stop_at`: last.pt holds the last finished step, resume continues from it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfdeploy.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, save_checkpoint
from sfdeploy.io import atomic_write_text, remove_stale_temp_files
from sfdeploy.config import ConfigError
from sfdeploy.data import collate
from sfdeploy.models import build_model
from sfdeploy.models.builder import resolved_prior
from sfdeploy.sampling_free import FrozenGuidedLoss, GuidedLossScaling

from . import distributed as D
from . import gpu
from .config import TrainConfig
from .data import train_dataset, train_transforms_for
from .data import val_dataset as open_val_dataset
from .metrics_log import MetricsLogger
from .weights import apply_weights
from .optim import build_optimizer, build_scheduler
from .step_sync import DeferredChecks, is_read_step

OUTCOMES = ("completed", "diverged", "interrupted")


@dataclass
class TrainResult:
    out_dir: Path
    outcome: str
    steps: int  # optimiser steps finished
    total_steps: int
    final_metrics: dict[str, Any] = field(default_factory=dict)  # last evaluation ({} when none ran)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_ap: float | None = None
    last_losses: dict[str, float] = field(default_factory=dict)
    median_step_time_s: float | None = None
    peak_memory_mb: float | None = None
    priors: dict[str, float] = field(default_factory=dict)
    message: str = ""
    diverged_step: int | None = None
    diverged_term: str | None = None
    world_size: int = 1
    train_images: int = 0
    rank_weight_digests: list[str] = field(default_factory=list)

    @property
    def last_checkpoint(self) -> Path:
        return Path(self.out_dir) / "last.pt"

    @property
    def best_checkpoint(self) -> Path | None:
        p = Path(self.out_dir) / "best.pt"
        return p if p.is_file() else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


# ----------------------------------------------------------------------------------------------------------------
# small helpers


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
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_memory_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

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


def _targets_to(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


class _Say:
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


def _evaluate(model: torch.nn.Module, dataset, cfg: TrainConfig, device: torch.device, progress: bool):  # type: ignore[no-untyped-def]
    try:
        from training.evaluate import evaluate
    except ImportError as exc:
        from sfdeploy.errors import UserError

        raise UserError(f"evaluation is not available ({exc}); train without --val-data/--eval-every") from exc
    m = D.unwrap(model)
    m.eval()
    try:
        with torch.no_grad():
            return evaluate(m, dataset, device=str(device), batch_size=cfg.eval_batch_size, progress=progress,
                            workers=cfg.workers)
    finally:
        m.train()


def _bbox_ap(metrics: dict[str, Any] | None) -> float | None:
    try:
        ap = float(metrics["bbox"]["AP"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    return ap if math.isfinite(ap) else None


def _estimate_priors(cfg: TrainConfig, progress: bool, say: _Say) -> dict[str, float]:
    head = cfg.model.prior_heads[0]
    try:
        from sfdeploy.sampling_free.prior import estimate_priors
    except ImportError:
        pi = resolved_prior(cfg.model)
        say(f"warning: prior estimation is not available here; using the fixed prior {head}={pi:.3g}")
        return {head: pi}
    raw = train_dataset(cfg, with_masks=False)
    result = estimate_priors(cfg.model, raw, cache_dir=cfg.prior_cache_dir, progress=progress)
    pis = {k: float(v) for k, v in result.pi.items()}
    detail = ", ".join(f"{k}={v:.3g} (fg {result.fg.get(k, '?')}, bg {result.bg.get(k, '?')})" for k, v in pis.items())
    src = "cached" if result.cached else f"{result.images} images, {result.seconds:.1f} s"
    say(f"optimal prior pi: {detail} [{src}]")
    return pis


# ----------------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Run (or resume, cfg.resume) one training run; see the module docstring. `stop_at`: stop after that step as
    if interrupted (tests/resume demos). Raises ConfigError/DataError/CheckpointError for user problems."""
    cfg = TrainConfig.from_dict(cfg.to_dict())  # private copy: we resolve class names and priors into it
    info = D.init_from_env(cfg.device, timeout_minutes=cfg.dist_timeout_minutes)
    try:
        return _train(cfg, info, progress, stop_at)
    finally:
        D.cleanup(info)


def _train(cfg: TrainConfig, info: D.DistInfo, progress: bool, stop_at: int | None) -> TrainResult:
    main = info.is_main
    say = _Say(main)
    device = resolve_device(cfg.device, info)
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temp_files(out):  # a run killed mid-save (checkpoint, config, result)
            say(f"removed {stale.name}, left by an interrupted save")
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) must be divisible by the {info.world_size} ranks")
    per_rank = cfg.batch_size // info.world_size

    # -- resume: the checkpoint's model config is authoritative (class names, estimated priors) --------------------
    ckpt = None
    if cfg.resume:
        last = out / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"cannot resume: {last} not found (train without --resume first)")
        ckpt = load_checkpoint(last)
        if "train_state" not in ckpt.extra:
            raise CheckpointError(f"cannot resume: {last} has no training state")
        cfg.model = ckpt.config

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- data ----------------------------------------------------------------------------------------------------
    transforms = train_transforms_for(cfg)
    dataset = train_dataset(cfg, transforms=transforms, with_masks=cfg.model.has_masks)
    if ckpt is None:
        cfg.model = cfg.model.replace(class_names=list(dataset.class_names), category_ids=dataset.category_ids)
    elif list(dataset.class_names) != list(cfg.model.class_names):
        raise CheckpointError(f"cannot resume: the data's classes {dataset.class_names} differ from the "
                              f"checkpoint's {cfg.model.class_names}")
    val_dataset = None
    if main:
        val_dataset = open_val_dataset(cfg, with_masks=cfg.model.has_masks)
    if val_dataset is not None:
        if list(val_dataset.class_names) != list(cfg.model.class_names):
            raise ConfigError(f"--val-data classes {val_dataset.class_names} differ from the training data's "
                              f"{cfg.model.class_names}")
    if cfg.max_steps is not None:
        total_steps = cfg.max_steps
    else:
        total_steps = math.ceil((cfg.epochs or 1) * len(dataset) / cfg.batch_size)

    # -- priors (optimal bias initialisation), rank 0 estimates, everyone gets them ---------------------------------
    if ckpt is None and cfg.model.uses_optimal_init and cfg.model.prior_heads[0] not in cfg.model.priors:
        pis = _estimate_priors(cfg, progress, say) if main else None
        pis = D.broadcast_object(info, pis)
        cfg.model = cfg.model.replace(priors={**cfg.model.priors, **pis})
    priors_used = {cfg.model.prior_heads[0]: resolved_prior(cfg.model)}

    if main:
        resolved = dataclasses.replace(cfg, resume=False)
        atomic_write_text(out / "config.yaml", resolved.to_yaml())

    # -- model, optimiser, schedule --------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, load_backbone_weights=ckpt is None)
    if ckpt is None and cfg.weights:
        apply_weights(model, cfg, out, say, main, progress)
    model = model.to(device)
    model.train()
    amp_dt = gpu.amp_dtype(cfg.amp, device)
    if cfg.amp != "off" and amp_dt is None:
        say(f"warning: --amp {cfg.amp} needs CUDA; training on {device} in fp32 (bf16 works on the CPU)")
    gpu.configure_backends(cfg, device)
    speed = gpu.prepare_model(model, cfg, info, device, amp_dt)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, total_steps, cfg)
    use_amp = amp_dt is torch.float16  # fp16 needs loss scaling; bf16 has fp32's range
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    step = 0
    early: list[float] = []
    best_ap: float | None = None
    best_metrics: dict[str, Any] = {}
    final_metrics: dict[str, Any] = {}
    if ckpt is not None:
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(ckpt.extra["optimizer"])
        scheduler.load_state_dict(ckpt.extra["scheduler"])
        ts = ckpt.extra["train_state"]
        step = int(ts["step"])
        early = [float(x) for x in ts.get("early_losses", [])]
        best_ap = ts.get("best_ap")
        best_metrics = ckpt.meta.get("best_metrics", {}) or {}
        final_metrics = ckpt.meta.get("metrics", {}) or {}
        if use_amp and "scaler" in ts:
            scaler.load_state_dict(ts["scaler"])
        set_rng_state(ts["rng"], device)
        say(f"resuming from {out / 'last.pt'} at step {step}/{total_steps}")
        if step >= total_steps:
            say(f"nothing to do: the checkpoint is at step {step} and the run has {total_steps} steps "
                "(raise --max-steps to train further)")
    # every parameter gets a gradient every step, two-stage detectors included (measured): no unused-parameter scan
    ddp_model = D.wrap_ddp(model, info, device, find_unused_parameters=False)

    logger = MetricsLogger(out, tensorboard=cfg.tensorboard, enabled=main)
    if ckpt is None:
        logger.reset()
    else:
        logger.truncate_after(step)
    logger.log({"event": "start", "step": step, "resumed": ckpt is not None, "total_steps": total_steps,
                "detector": cfg.model.detector, "method": cfg.model.method, "backbone": cfg.model.backbone,
                "priors": priors_used, "lr": cfg.effective_lr, "batch_size": cfg.batch_size,
                "world_size": info.world_size, "train_images": len(dataset), "device": str(device),
                "amp": cfg.amp if amp_dt is not None else "off", **speed,
                "tensorboard": logger.tensorboard_enabled})
    say(f"training {cfg.model.detector}/{cfg.model.method}/{cfg.model.backbone} on {len(dataset)} images "
        f"({cfg.data}), {total_steps} steps x batch {cfg.batch_size}"
        + (f" on {info.world_size} ranks" if info.enabled else "")
        + f", lr {cfg.effective_lr:.3g} ({cfg.optimizer}), device {device}; output {out}")

    def meta(outcome: str, metrics: dict[str, Any], step_now: int) -> dict[str, Any]:
        return {"step": step_now, "epoch": step_now * cfg.batch_size / len(dataset), "priors": priors_used,
                "metrics": metrics, "best_metrics": best_metrics,
                "step_time_s": statistics.median(step_times) if step_times else None,
                "train_images": len(dataset), "data": cfg.data, "outcome": outcome, "total_steps": total_steps,
                "batch_size": cfg.batch_size, "world_size": info.world_size}

    def train_state(step_now: int) -> dict[str, Any]:
        ts: dict[str, Any] = {"step": step_now, "total_steps": total_steps, "rng": rng_state(device),
                              "sampler": {"position": step_now * cfg.batch_size, "seed": cfg.seed,
                                          "world_size": info.world_size},
                              "early_losses": list(early), "best_ap": best_ap}
        if use_amp:
            ts["scaler"] = scaler.state_dict()
        return ts

    def save(path: Path, outcome: str, metrics: dict[str, Any], step_now: int) -> None:
        save_checkpoint(path, model, cfg.model, meta(outcome, metrics, step_now), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), train_state=train_state(step_now))

    # -- data loader over the endless sampler ----------------------------------------------------------------------
    sampler = D.InfiniteSampler(len(dataset), seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                                start=step * cfg.batch_size)
    loader = torch.utils.data.DataLoader(
        gpu.Uint8Images(D.SeededSamples(dataset)) if cfg.uint8_images and device.type == "cuda"
        else D.SeededSamples(dataset), batch_size=per_rank, sampler=sampler, num_workers=cfg.workers,
        collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=cfg.pin_memory and device.type == "cuda",
        persistent_workers=cfg.persistent_workers and cfg.workers > 0, prefetch_factor=2 if cfg.workers > 0 else None,
    )

    step_times: list[float] = []
    outcome = "completed"
    message = ""
    div_step: int | None = None
    div_term: str | None = None
    last_losses: dict[str, float] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    deferred = DeferredChecks(device)
    grad_norm = float("nan")

    if main and ckpt is None:
        save(out / "last.pt", "in_progress", {}, 0)  # a good checkpoint always exists (step 0)

    bar = None
    if main and progress and step < total_steps:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, file=sys.stderr, unit="step", dynamic_ncols=True,
                   desc=f"{cfg.model.detector}/{cfg.model.method}", leave=True)
        say.bar = bar

    def evaluate_now(step_now: int) -> None:
        nonlocal best_ap, best_metrics, final_metrics
        if main and val_dataset is not None:
            metrics = _evaluate(model, val_dataset, cfg, device, progress=False)
            final_metrics = metrics
            ap = _bbox_ap(metrics)
            logger.log({"event": "eval", "step": step_now, "metrics": metrics})
            say(f"step {step_now}: bbox AP {ap if ap is None else round(ap, 4)}"
                + (f", segm AP {metrics['segm'].get('AP'):.4f}" if isinstance(metrics.get("segm"), dict)
                   and metrics["segm"].get("AP") is not None else ""))
            if ap is not None and (best_ap is None or ap > best_ap):
                best_ap, best_metrics = ap, metrics
                save(out / "best.pt", "in_progress" if step_now < total_steps else "completed", metrics, step_now)
        D.barrier(info)

    def _backward(total: torch.Tensor) -> torch.Tensor:
        """Backward and gradient norm (a device tensor: clipped when configured, else only measured)."""
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        if cfg.grad_clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])

    def _update() -> None:
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    def _backward_step(total: torch.Tensor, loss_dict: dict[str, torch.Tensor], step_now: int) -> None:
        norm = _backward(total)
        deferred.watch(step_now, loss_dict, None if use_amp else norm)
        _update()

    it = iter(loader)
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            images, targets = next(it)
            images = [gpu.image_to_device(im, device) for im in images]
            targets = _targets_to(targets, device)
            with torch.autocast(device_type=device.type, dtype=amp_dt or torch.float32, enabled=amp_dt is not None):
                loss_dict = ddp_model(images, targets)
            total = sum(v.float() for v in loss_dict.values())
            read = is_read_step(step + 1, total_steps=total_steps, log_every=cfg.log_every,
                                checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
                                early_needed=len(early) < cfg.divergence_window, stop_at=stop_at)
            if not read:  # no host sync: the values are checked on the device and read at the next read step
                _backward_step(total, loss_dict, step + 1)
                step += 1
                step_times.append(time.perf_counter() - t0)
                if bar is not None:
                    bar.update(1)
                continue
            late = deferred.read(info)
            if late is not None:  # a non-finite value since the last read: stop (last.pt predates it)
                outcome, (div_step, div_term) = "diverged", late
                message = f"loss term {div_term!r} was not finite at step {div_step} (read at step {step + 1})"
                break
            local = {k: float(v.detach()) for k, v in loss_dict.items()}
            vals = D.average_floats(info, local, device)

            # -- divergence check (before any update: the weights stay those of the last good step) ---------------
            bad = next((k for k in sorted(vals) if not math.isfinite(vals[k])), None)
            main_loss = sum(v for k, v in vals.items() if "delta" not in k)
            if bad is None and len(early) >= 3:
                med = statistics.median(early)
                if med > 0 and main_loss > cfg.divergence_factor * med:
                    bad = max((k for k in vals if "delta" not in k), key=lambda k: vals[k])
                    message = (f"loss exploded: {main_loss:.4g} > {cfg.divergence_factor:g} x early median "
                               f"{med:.4g} (largest term {bad!r} = {vals[bad]:.4g})")
            if bad is not None:
                outcome, div_step, div_term = "diverged", step + 1, bad
                message = message or f"loss term {bad!r} is {vals[bad]}"
                last_losses = vals
                break
            if len(early) < cfg.divergence_window:
                early.append(main_loss)

            norm = _backward(total)
            grad_norm = float(norm)
            if not math.isfinite(grad_norm) and not use_amp:  # AMP: the scaler skips such steps by design
                outcome, div_step, div_term = "diverged", step + 1, "grad_norm"
                message = f"gradient norm is {grad_norm}"
                last_losses = vals
                break
            lr = optimizer.param_groups[0]["lr"]
            _update()
            step += 1
            dt = time.perf_counter() - t0
            step_times.append(dt)
            last_losses = {**vals, "total": sum(vals.values())}

            if bar is not None:
                bar.set_postfix(loss=f"{last_losses['total']:.4g}", lr=f"{lr:.2e}",
                                img_s=f"{cfg.batch_size / dt:.2f}", refresh=False)
                bar.update(1)
            if main and (step % cfg.log_every == 0 or step == 1 or step == total_steps):
                rec: dict[str, Any] = {"event": "train", "step": step,
                                       "epoch": round(step * cfg.batch_size / len(dataset), 4), **vals,
                                       "total": last_losses["total"], "lr": lr, "grad_norm": grad_norm,
                                       "step_time": dt, "images_per_s": cfg.batch_size / dt,
                                       "memory_mb": memory_mb(device)}
                guides = guide_values(model)
                if guides:
                    rec["guide"] = guides
                logger.log(rec)
            if step % cfg.checkpoint_every == 0 and step < total_steps and main:
                save(out / "last.pt", "in_progress", final_metrics, step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                evaluate_now(step)
            if stop_at is not None and step >= stop_at and step < total_steps:
                outcome, message = "interrupted", f"stopped at step {step} (stop_at)"
                break
    except KeyboardInterrupt:
        outcome, message = "interrupted", f"interrupted at step {step}"
    finally:
        if bar is not None:
            bar.close()
            say.bar = None

    # -- the end -----------------------------------------------------------------------------------------------
    if outcome == "completed":
        if val_dataset is not None and step > 0:
            evaluate_now(step)
        else:
            D.barrier(info)
        if main:
            save(out / "last.pt", "completed", final_metrics, step)
    elif outcome == "interrupted":
        late = deferred.read(info)
        if late is not None:
            outcome, (div_step, div_term) = "diverged", late
            message = f"loss term {div_term!r} was not finite at step {div_step}"
    if outcome == "interrupted":
        if main:
            save(out / "last.pt", "interrupted", final_metrics, step)
        say(f"{message}; resume with --resume (last.pt is at step {step})")
    elif outcome == "diverged":  # keep the last good last.pt as it is, only mark its meta
        last = out / "last.pt"
        good_step = None
        if main and last.is_file():
            payload = torch.load(last, map_location="cpu", weights_only=True)
            good_step = payload["meta"].get("step")
            payload["meta"] = {**payload["meta"], "outcome": "diverged", "diverged_step": div_step,
                               "diverged_term": div_term}
            atomic_torch_save(payload, last)
        message = (f"diverged at step {div_step}: {message}; kept the last good checkpoint {last}"
                   + (f" (step {good_step})" if good_step is not None else ""))
        say(f"warning: {message}")
        logger.log({"event": "diverged", "step": div_step, "term": div_term, "losses": last_losses,
                    "message": message})

    digests: list[str] = []
    if info.enabled:
        per_tensor = {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:12]
                      for k, v in D.unwrap(model).named_parameters()}
        gathered = D.all_gather_object(info, per_tensor)
        digests = D.all_gather_object(info, weights_digest(model))
        differ = sorted(k for k in per_tensor if len({g.get(k) for g in gathered}) > 1)
        if differ:
            say(f"warning: ranks disagree on {len(differ)} parameters, e.g. {differ[:5]}")
    median_dt = statistics.median(step_times) if step_times else None
    peak = peak_memory_mb(device)
    result = TrainResult(
        out_dir=out, outcome=outcome, steps=step, total_steps=total_steps, final_metrics=final_metrics,
        best_metrics=best_metrics, best_ap=best_ap, last_losses=last_losses, median_step_time_s=median_dt,
        peak_memory_mb=peak, priors=priors_used, message=message, diverged_step=div_step, diverged_term=div_term,
        world_size=info.world_size, train_images=len(dataset), rank_weight_digests=digests,
    )
    if main:
        logger.log({"event": "end", "step": step, "outcome": outcome, "total_steps": total_steps,
                    "median_step_time_s": median_dt, "peak_memory_mb": peak, "message": message,
                    "best_ap": best_ap, "ranks_agree": len(set(digests)) <= 1})
        logger.close()
        atomic_write_text(out / "result.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        if cfg.plots:
            try:
                from .report import make_report

                pngs = make_report(out / "metrics.jsonl", out / "plots")
                if pngs:
                    say(f"loss-dynamics plots: {', '.join(str(p) for p in pngs)}")
            except Exception as exc:  # plots are a convenience: never fail a finished run on them
                say(f"warning: could not draw the plots: {exc}")
        if outcome == "completed":
            say(f"done: {step} steps, median step {median_dt or 0:.3f} s, peak memory {peak:.0f} MB; "
                f"{out / 'last.pt'}" + (f", best bbox AP {best_ap:.4f} in {out / 'best.pt'}" if best_ap is not None
                                        else ""))
    return result
