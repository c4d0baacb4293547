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
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfdeploy.checkpoint import save_checkpoint, update_checkpoint_meta
from sfdeploy.config import ConfigError
from sfdeploy.io import atomic_write_text, remove_stale_temp_files

from . import distributed as D
from . import gpu
from .config import TrainConfig
from .divergence import Divergence, DivergenceMonitor
from .metrics_log import MetricsLogger
from .result import OUTCOMES, TrainResult
from .run_setup import build_modules, make_loader, open_data, resolve_priors, resume_checkpoint
from .runtime import (Say, guide_values, memory_mb, peak_memory_mb, resolve_device, rng_state, set_rng_state,
                      weights_digest)
from .step_sync import DeferredChecks, is_read_step
from .validation import bbox_ap, evaluate_model

__all__ = ["OUTCOMES", "TrainResult", "Trainer", "guide_values", "train"]

def _targets_to(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def train(cfg: TrainConfig, progress: bool = True, stop_at: int | None = None) -> TrainResult:
    """Run (or resume, cfg.resume) one training run; see the module docstring. `stop_at`: stop after that step as
    if interrupted (tests/resume demos). Raises ConfigError/DataError/CheckpointError for user problems."""
    cfg = TrainConfig.from_dict(cfg.to_dict())  # private copy: we resolve class names and priors into it
    info = D.init_from_env(cfg.device, timeout_minutes=cfg.dist_timeout_minutes)
    try:
        return Trainer(cfg, info, progress, stop_at).run()
    finally:
        D.cleanup(info)


class Trainer:
    """One training run in four parts, like detectron2's trainer: `setup` (output folder, resume, data, priors,
    model, optimiser, logger, loader), `train_step` (one optimiser step; host reads only on read steps),
    `after_step` (log, checkpoint, evaluate; `evaluate` keeps best.pt) and `finish` (the outcome written through
    sfdeploy.checkpoint, result.json, plots). `run` strings them together; `train(cfg)` is the public entry."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo, progress: bool, stop_at: int | None) -> None:
        self.cfg, self.info, self.progress, self.stop_at = cfg, info, progress, stop_at
        self.main = info.is_main
        self.say = Say(self.main)
        self.device = resolve_device(cfg.device, info)
        self.out = Path(cfg.out)
        self.step = 0
        self.best_ap: float | None = None
        self.best_metrics: dict[str, Any] = {}
        self.final_metrics: dict[str, Any] = {}
        self.step_times: list[float] = []
        self.outcome = "completed"
        self.message = ""
        self.divergence: Divergence | None = None
        self.last_losses: dict[str, float] = {}
        self.bar: Any = None

    def run(self) -> TrainResult:
        self.setup()
        try:
            while self.step < self.total_steps and self.train_step():
                pass
        except KeyboardInterrupt:
            self.outcome, self.message = "interrupted", f"interrupted at step {self.step}"
        finally:
            if self.bar is not None:
                self.bar.close()
                self.say.bar = None
        return self.finish()

    # -- setup -----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temp_files(self.out):  # a run killed mid-save (checkpoint, config, result)
                self.say(f"removed {stale.name}, left by an interrupted save")
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} (global) must be divisible by the {info.world_size} ranks")
        ckpt = resume_checkpoint(cfg, self.out)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.dataset, self.val_dataset, self.total_steps = open_data(cfg, ckpt, self.main)
        self.priors_used = resolve_priors(cfg, ckpt, info, self.progress, self.say)
        if self.main:
            atomic_write_text(self.out / "config.yaml", dataclasses.replace(cfg, resume=False).to_yaml())
        m = build_modules(cfg, ckpt, self.out, info, self.device, self.total_steps, self.say, self.progress)
        self.model, self.optimizer, self.scheduler, self.scaler = m.model, m.optimizer, m.scheduler, m.scaler
        self.amp_dt, self.use_amp, self.speed = m.amp_dt, m.use_amp, m.speed
        self.monitor = DivergenceMonitor(cfg.divergence_factor, cfg.divergence_window)
        if ckpt is not None:
            self._restore(ckpt)
        # every parameter gets a gradient every step, two-stage detectors included (measured): no unused-parameter scan
        self.ddp_model = D.wrap_ddp(self.model, info, self.device, find_unused_parameters=False)
        self._start_logging(resumed=ckpt is not None)
        self.loader_iter = iter(make_loader(self.dataset, cfg, info, self.device, self.step))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.deferred = DeferredChecks(self.device)
        self.grad_norm = float("nan")
        if self.main and ckpt is None:
            self.save(self.out / "last.pt", "in_progress", {}, 0)  # a good checkpoint always exists (step 0)
        if self.main and self.progress and self.step < self.total_steps:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total_steps, initial=self.step, file=sys.stderr, unit="step",
                            dynamic_ncols=True, desc=f"{cfg.model.detector}/{cfg.model.method}", leave=True)
            self.say.bar = self.bar

    def _restore(self, ckpt: Any) -> None:
        """Weights, optimiser, schedule, step, early losses, best AP, scaler and RNG from the resume checkpoint."""
        self.model.load_state_dict(ckpt.state_dict)
        self.optimizer.load_state_dict(ckpt.extra["optimizer"])
        self.scheduler.load_state_dict(ckpt.extra["scheduler"])
        ts = ckpt.extra["train_state"]
        self.step = int(ts["step"])
        self.monitor.early = [float(x) for x in ts.get("early_losses", [])]
        self.best_ap = ts.get("best_ap")
        self.best_metrics = ckpt.meta.get("best_metrics", {}) or {}
        self.final_metrics = ckpt.meta.get("metrics", {}) or {}
        if self.use_amp and "scaler" in ts:
            self.scaler.load_state_dict(ts["scaler"])
        set_rng_state(ts["rng"], self.device)
        self.say(f"resuming from {self.out / 'last.pt'} at step {self.step}/{self.total_steps}")
        if self.step >= self.total_steps:
            self.say(f"nothing to do: the checkpoint is at step {self.step} and the run has {self.total_steps} steps "
                     "(raise --max-steps to train further)")

    def _start_logging(self, resumed: bool) -> None:
        cfg, info = self.cfg, self.info
        self.logger = MetricsLogger(self.out, tensorboard=cfg.tensorboard, enabled=self.main)
        if resumed:
            self.logger.truncate_after(self.step)
        else:
            self.logger.reset()
        self.logger.log({"event": "start", "step": self.step, "resumed": resumed, "total_steps": self.total_steps,
                         "detector": cfg.model.detector, "method": cfg.model.method, "backbone": cfg.model.backbone,
                         "priors": self.priors_used, "lr": cfg.effective_lr, "batch_size": cfg.batch_size,
                         "world_size": info.world_size, "train_images": len(self.dataset), "device": str(self.device),
                         "amp": cfg.amp if self.amp_dt is not None else "off", **self.speed,
                         "tensorboard": self.logger.tensorboard_enabled})
        self.say(f"training {cfg.model.detector}/{cfg.model.method}/{cfg.model.backbone} on {len(self.dataset)} "
                 f"images ({cfg.data}), {self.total_steps} steps x batch {cfg.batch_size}"
                 + (f" on {info.world_size} ranks" if info.enabled else "")
                 + f", lr {cfg.effective_lr:.3g} ({cfg.optimizer}), device {self.device}; output {self.out}")

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def meta(self, outcome: str, metrics: dict[str, Any], step_now: int) -> dict[str, Any]:
        cfg = self.cfg
        return {"step": step_now, "epoch": step_now * cfg.batch_size / len(self.dataset), "priors": self.priors_used,
                "metrics": metrics, "best_metrics": self.best_metrics,
                "step_time_s": statistics.median(self.step_times) if self.step_times else None,
                "train_images": len(self.dataset), "data": cfg.data, "outcome": outcome,
                "total_steps": self.total_steps, "batch_size": cfg.batch_size, "world_size": self.info.world_size}

    def train_state(self, step_now: int) -> dict[str, Any]:
        cfg = self.cfg
        ts: dict[str, Any] = {"step": step_now, "total_steps": self.total_steps, "rng": rng_state(self.device),
                              "sampler": {"position": step_now * cfg.batch_size, "seed": cfg.seed,
                                          "world_size": self.info.world_size},
                              "early_losses": list(self.monitor.early), "best_ap": self.best_ap}
        if self.use_amp:
            ts["scaler"] = self.scaler.state_dict()
        return ts

    def save(self, path: Path, outcome: str, metrics: dict[str, Any], step_now: int) -> None:
        save_checkpoint(path, self.model, self.cfg.model, self.meta(outcome, metrics, step_now),
                        optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        train_state=self.train_state(step_now))

    def evaluate(self, step_now: int) -> None:
        """Evaluate on the val split (rank 0), keep best.pt by bbox AP; every rank waits for it."""
        if self.main and self.val_dataset is not None:
            metrics = evaluate_model(self.model, self.val_dataset, self.cfg, self.device, progress=False)
            self.final_metrics = metrics
            ap = bbox_ap(metrics)
            self.logger.log({"event": "eval", "step": step_now, "metrics": metrics})
            self.say(f"step {step_now}: bbox AP {ap if ap is None else round(ap, 4)}"
                     + (f", segm AP {metrics['segm'].get('AP'):.4f}" if isinstance(metrics.get("segm"), dict)
                        and metrics["segm"].get("AP") is not None else ""))
            if ap is not None and (self.best_ap is None or ap > self.best_ap):
                self.best_ap, self.best_metrics = ap, metrics
                self.save(self.out / "best.pt", "in_progress" if step_now < self.total_steps else "completed",
                          metrics, step_now)
        D.barrier(self.info)

    # -- one step --------------------------------------------------------------------------------------------
    def _backward(self, total: torch.Tensor) -> torch.Tensor:
        """Backward and gradient norm (a device tensor: clipped when configured, else only measured)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip is not None:
            return torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        # clip_grad_norm_ with an infinite bound only measures (torch.nn.utils.get_total_norm needs torch >= 2.6)
        return torch.nn.utils.clip_grad_norm_(self.params, float("inf"))

    def _update(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _diverged(self, divergence: Divergence, losses: dict[str, float] | None = None) -> bool:
        """Record the divergence (losses: the step's, when read) and stop the loop."""
        self.outcome, self.divergence, self.message = "diverged", divergence, divergence.message
        if losses is not None:
            self.last_losses = losses
        return False

    def train_step(self) -> bool:
        """One optimiser step; False when the run stops here (diverged, or stop_at)."""
        cfg, device = self.cfg, self.device
        t0 = time.perf_counter()
        images, targets = next(self.loader_iter)
        images = [gpu.image_to_device(im, device) for im in images]
        targets = _targets_to(targets, device)
        with torch.autocast(device_type=device.type, dtype=self.amp_dt or torch.float32,
                            enabled=self.amp_dt is not None):
            loss_dict = self.ddp_model(images, targets)
        total = sum(v.float() for v in loss_dict.values())
        read = is_read_step(self.step + 1, total_steps=self.total_steps, log_every=cfg.log_every,
                            checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
                            early_needed=self.monitor.filling, stop_at=self.stop_at)
        if not read:  # no host sync: the values are checked on the device and read at the next read step
            norm = self._backward(total)
            self.deferred.watch(self.step + 1, loss_dict, None if self.use_amp else norm)
            self._update()
            self.step += 1
            self.step_times.append(time.perf_counter() - t0)
            if self.bar is not None:
                self.bar.update(1)
            return True
        late = self.deferred.read(self.info)
        if late is not None:  # a non-finite value since the last read: stop (last.pt predates it)
            return self._diverged(DivergenceMonitor.late(*late, read_at=self.step + 1))
        local = {k: float(v.detach()) for k, v in loss_dict.items()}
        vals = D.average_floats(self.info, local, device)
        # divergence check before any update: the weights stay those of the last good step
        divergence = self.monitor.check_losses(vals, self.step + 1)
        if divergence is not None:
            return self._diverged(divergence, vals)
        self.grad_norm = float(self._backward(total))
        divergence = self.monitor.check_grad_norm(self.grad_norm, self.step + 1, loss_scaling=self.use_amp)
        if divergence is not None:
            return self._diverged(divergence, vals)
        lr = self.optimizer.param_groups[0]["lr"]
        self._update()
        self.step += 1
        dt = time.perf_counter() - t0
        self.step_times.append(dt)
        self.last_losses = {**vals, "total": sum(vals.values())}
        return self.after_step(vals, lr, dt)

    def after_step(self, vals: dict[str, float], lr: float, dt: float) -> bool:
        """Progress bar, metrics log, periodic checkpoint and evaluation, stop_at; False to stop."""
        cfg, step = self.cfg, self.step
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.last_losses['total']:.4g}", lr=f"{lr:.2e}",
                                 img_s=f"{cfg.batch_size / dt:.2f}", refresh=False)
            self.bar.update(1)
        if self.main and (step % cfg.log_every == 0 or step == 1 or step == self.total_steps):
            rec: dict[str, Any] = {"event": "train", "step": step,
                                   "epoch": round(step * cfg.batch_size / len(self.dataset), 4), **vals,
                                   "total": self.last_losses["total"], "lr": lr, "grad_norm": self.grad_norm,
                                   "step_time": dt, "images_per_s": cfg.batch_size / dt,
                                   "memory_mb": memory_mb(self.device)}
            guides = guide_values(self.model)
            if guides:
                rec["guide"] = guides
            self.logger.log(rec)
        if step % cfg.checkpoint_every == 0 and step < self.total_steps and self.main:
            self.save(self.out / "last.pt", "in_progress", self.final_metrics, step)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
            self.evaluate(step)
        if self.stop_at is not None and step >= self.stop_at and step < self.total_steps:
            self.outcome, self.message = "interrupted", f"stopped at step {step} (stop_at)"
            return False
        return True

    # -- the end -------------------------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """Write the outcome (last.pt, a diverged run's mark), check the ranks agree, log the end, result.json."""
        if self.outcome == "completed":
            if self.val_dataset is not None and self.step > 0:
                self.evaluate(self.step)
            else:
                D.barrier(self.info)
            if self.main:
                self.save(self.out / "last.pt", "completed", self.final_metrics, self.step)
        elif self.outcome == "interrupted":
            late = self.deferred.read(self.info)
            if late is not None:
                self._diverged(DivergenceMonitor.late(*late))
        if self.outcome == "interrupted":
            if self.main:
                self.save(self.out / "last.pt", "interrupted", self.final_metrics, self.step)
            self.say(f"{self.message}; resume with --resume (last.pt is at step {self.step})")
        elif self.outcome == "diverged":
            self._mark_diverged()
        digests = self._rank_digests()
        result = self._result(digests)
        if self.main:
            self._write_end(result, digests)
        return result

    def _mark_diverged(self) -> None:
        """Keep the last good last.pt as it is, only mark its meta (through sfdeploy.checkpoint)."""
        div = self.divergence
        assert div is not None
        last = self.out / "last.pt"
        good_step = None
        if self.main and last.is_file():
            meta = update_checkpoint_meta(last, outcome="diverged", diverged_step=div.step, diverged_term=div.term)
            good_step = meta.get("step")
        self.message = (f"diverged at step {div.step}: {self.message}; kept the last good checkpoint {last}"
                        + (f" (step {good_step})" if good_step is not None else ""))
        self.say(f"warning: {self.message}")
        self.logger.log({"event": "diverged", "step": div.step, "term": div.term, "losses": self.last_losses,
                         "message": self.message})

    def _rank_digests(self) -> list[str]:
        """Under DDP, each rank's weights digest (they must agree); a warning names parameters that differ."""
        if not self.info.enabled:
            return []
        per_tensor = {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:12]
                      for k, v in D.unwrap(self.model).named_parameters()}
        gathered = D.all_gather_object(self.info, per_tensor)
        digests = D.all_gather_object(self.info, weights_digest(self.model))
        differ = sorted(k for k in per_tensor if len({g.get(k) for g in gathered}) > 1)
        if differ:
            self.say(f"warning: ranks disagree on {len(differ)} parameters, e.g. {differ[:5]}")
        return digests

    def _result(self, digests: list[str]) -> TrainResult:
        div = self.divergence
        return TrainResult(
            out_dir=self.out, outcome=self.outcome, steps=self.step, total_steps=self.total_steps,
            final_metrics=self.final_metrics, best_metrics=self.best_metrics, best_ap=self.best_ap,
            last_losses=self.last_losses,
            median_step_time_s=statistics.median(self.step_times) if self.step_times else None,
            peak_memory_mb=peak_memory_mb(self.device), priors=self.priors_used, message=self.message,
            diverged_step=div.step if div else None, diverged_term=div.term if div else None,
            world_size=self.info.world_size, train_images=len(self.dataset), rank_weight_digests=digests,
        )

    def _write_end(self, result: TrainResult, digests: list[str]) -> None:
        """Rank 0: the end record, result.json, the loss-dynamics plots and the closing line."""
        median_dt, peak = result.median_step_time_s, result.peak_memory_mb
        self.logger.log({"event": "end", "step": self.step, "outcome": self.outcome, "total_steps": self.total_steps,
                         "median_step_time_s": median_dt, "peak_memory_mb": peak, "message": self.message,
                         "best_ap": self.best_ap, "ranks_agree": len(set(digests)) <= 1})
        self.logger.close()
        atomic_write_text(self.out / "result.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        if self.cfg.plots:
            try:
                from .report import make_report

                pngs = make_report(self.out / "metrics.jsonl", self.out / "plots")
                if pngs:
                    self.say(f"loss-dynamics plots: {', '.join(str(p) for p in pngs)}")
            except Exception as exc:  # plots are a convenience: never fail a finished run on them
                self.say(f"warning: could not draw the plots: {exc}")
        if self.outcome == "completed":
            self.say(f"done: {self.step} steps, median step {median_dt or 0:.3f} s, peak memory {peak:.0f} MB; "
                     f"{self.out / 'last.pt'}" + (f", best bbox AP {self.best_ap:.4f} in {self.out / 'best.pt'}"
                                                  if self.best_ap is not None else ""))
