"""``radio train``: distill a ViT student with one adapter head per teacher from a cache.

The loop is short and delegates: ``train_step`` computes the loss dict and steps the optimizer;
checkpointing, logging and export are plain calls. Works as one CPU process and under
``accelerate launch`` with many processes (data is split by :class:`radio.data.CacheStream`, so the
DataLoader is deliberately *not* passed to ``accelerator.prepare``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from radio.adapters import AdapterConfig
from radio.cache import CacheReader, decode_features, decode_summary
from radio.checkpoint import CheckpointError, save_student
from radio.data import CacheStream, LoaderConfig, ResolutionSchedule, ThreadPrefetcher, make_loader, resolve_workers
from radio.losses import LossConfig, distill_loss
from radio.model import DistillModel
from radio.normalize import TargetStats
from radio.shift import draw_offsets, shift_batch
from radio.student import StudentConfig

from .config import (
    ConfigError,
    DiskFull,
    check_output_dir,
    config_to_yaml,
    disk_full,
    flatten_config,
    nearest_hint,
    require,
)
from .online import OnlineTeacherConfig, OnlineTeachers
from .tracking import (
    PENDING,
    MlflowConfig,
    NullRun,
    cache_dataset,
    check_tracking_uri,
    log_cache_input,
    model_id_of,
    replay_pending,
    start_run,
    tracking_uri,
)

__all__ = ["OptimConfig", "TrainJobConfig", "train", "main", "TrainingDiverged", "TrainingInterrupted"]


class TrainingDiverged(RuntimeError):
    pass


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was written at the last complete step; the message says how to resume."""


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    grad_accum: int = 1


def _default_teachers() -> list[str]:
    return ["tiny-clip", "tiny-dinov2", "tiny-sam"]


@dataclass
class TrainJobConfig:
    """``radio train``: which cache, which student, how long; outputs go to ``output``."""

    cache: str = "caches/samples-train"
    output: str = "runs/student"
    teachers: list[str] = field(default_factory=_default_teachers)
    # teachers (of `teachers`) run inside the step on the student's views instead of read from the cache
    online: dict[str, OnlineTeacherConfig] = field(default_factory=dict)
    student: StudentConfig = field(default_factory=lambda: StudentConfig(size="nano"))
    adapter_hidden: int = 256
    # How each teacher's targets are standardized before the loss: "channel" (per-channel mean/std) or "phis"
    # (PHI-S, arXiv:2410.01680: rotate to the covariance's eigenbasis, spread the variance evenly with a Hadamard
    # matrix, one scalar scale; fitted to the cache's exact second moments). Exported students undo either.
    standardize: Literal["channel", "phis"] = "channel"
    loss: LossConfig = field(default_factory=LossConfig)
    # Multi-resolution distillation: the student resolution of each batch (default: the cache's stored one).
    # e.g. resolution.mode=cycle resolution.resolutions=[64,128] (every teacher at a low and a high resolution), or
    # C-RADIOv4's stochastic resolutions: resolution.mode=partitions resolution.partitions=[[128,...,432],[512,...]]
    # (each optimizer step: one batch per partition, at a size drawn from it; see radio.data.ResolutionSchedule)
    resolution: ResolutionSchedule = field(default_factory=ResolutionSchedule)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 10
    max_steps: int | None = None  # stop the schedule early (the LR schedule still spans `epochs`)
    seed: int = 0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, none on CPU
    checkpoint_every: int = 50
    log_every: int = 10  # steps between metric reads: the step's only host sync, where the NaN/Inf guard runs
    compile: bool = False  # torch.compile the student (pays off on a GPU for long runs)
    keep_checkpoints: int = 2
    resume: bool = False
    resume_from: str | None = (
        None  # with resume=true: a checkpoint of OUTPUT/checkpoints (e.g. step-00000050) instead of the latest
    )
    run_name: str | None = None
    audit_keys: bool = False  # write OUTPUT/audit/epoch<e>-rank<r>.json: the keys each rank trained on
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="radio-students"))


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # loader batches of `epoch` consumed
    run_id: str | None = None
    last_good: str | None = None


def lr_lambda(total_steps: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _metric_key(k: str) -> str:
    """distill_loss's key -> the logged name (see Trainer.train_step)."""
    head, _, rest = k.partition("/")
    if head == "cos":
        return f"fidelity/{rest}"
    if head == "angle":
        return f"fidelity/{rest}_angle_deg"
    if head == "spread":
        return f"balance/{rest}_spread_deg"
    return k


def prepare_targets(batch: dict, teachers: list[str], stats: dict[str, TargetStats], device) -> dict:
    """Standardized float32 targets per teacher, decoded from their stored dtype on ``device``."""
    targets = {}
    for t in teachers:
        cols = {k[len(t) + 1 :]: v for k, v in batch.items() if k.startswith(f"{t}/")}
        raw = {"features": decode_features(cols, device)}
        if "summary" in cols:
            raw["summary"] = decode_summary(cols, device)
        targets[t] = stats[t].normalize(raw)
    return targets


def _select(batch: dict, keep: torch.Tensor) -> dict:
    def pick(v):
        if isinstance(v, torch.Tensor):
            return v[keep]
        return (
            [x for x, m in zip(v, keep.tolist(), strict=True) if m] if isinstance(v, list) else v
        )  # a batch-wide value (resolution)

    return {k: pick(v) for k, v in batch.items()}


class Trainer:
    def __init__(self, cfg: TrainJobConfig, resolved_yaml: str):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg, self.resolved_yaml = cfg, resolved_yaml
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() else "no"
        # cpu=True without CUDA: under a multi-process launch that selects the gloo backend (MULTI_CPU).
        # resolution partitions: every optimizer step accumulates one batch of each partition
        self.accum = cfg.optim.grad_accum * cfg.resolution.period
        self.acc = Accelerator(
            mixed_precision=mp, gradient_accumulation_steps=self.accum, cpu=not torch.cuda.is_available()
        )
        set_seed(cfg.seed)
        cached = [t for t in cfg.teachers if t not in cfg.online]
        reader = CacheReader(cfg.cache, cached)  # a teacher missing from the cache fails here
        self.reader = reader
        self.out = Path(cfg.output)
        self.specs, self.fingerprints = reader.specs, reader.fingerprints
        self.stats = reader.stats if cfg.standardize == "channel" else {t: reader.phis_stats_of(t) for t in cached}
        res = reader.manifest.student_resolution
        ps = cfg.student.patch_size
        if res % ps:
            fits = [p for p in range(2, min(res, 32) + 1) if res % p == 0]
            raise ConfigError(
                f"'student.patch_size' {ps} does not divide the {res}px views cache {cfg.cache} stores: "
                f"the student's grid must be whole. Choose a patch size dividing {res} (e.g. {fits[-3:]}) or "
                f"a cache built with a student_resolution that is a multiple of {ps}"
            )
        sp = cfg.loss.shift_px
        if sp and min([res, *cfg.resolution.resolutions]) - sp < ps:
            raise ConfigError(
                f"'loss.shift_px' {sp} leaves no crop of the {min([res, *cfg.resolution.resolutions])}px views "
                f"this run trains at: the shifted crop is the view less shift_px, at least one patch ({ps} px)"
            )
        rows = reader.manifest.views.rows // max(1, self.acc.num_processes)
        if cfg.loader.batch_size > rows:
            raise ConfigError(
                f"'loader.batch_size' {cfg.loader.batch_size} is larger than the {rows} "
                f"views each of the {self.acc.num_processes} process(es) reads per "
                f"epoch from cache {cfg.cache}: every step would be one partial batch. Use "
                f"loader.batch_size <= {rows}, or cache more images"
            )
        grid = (res // cfg.student.patch_size, res // cfg.student.patch_size)
        grids = dict(reader.grids)
        self.online, self.online_origin = None, {}
        self.workers = resolve_workers(cfg.loader)
        stream_kw = dict(
            manifest=reader.manifest,
            batch_size=cfg.loader.batch_size,
            shuffle_buffer=cfg.loader.shuffle_buffer,
            read_rows=cfg.loader.read_rows,
            fetch_ahead=cfg.loader.fetch_ahead,
            seed=cfg.seed,
            patch_size=cfg.student.patch_size,
        )
        if cfg.online:
            self.online = OnlineTeachers(cfg.online, self.acc.device, res)
            self.specs.update(self.online.specs)
            self.fingerprints.update({t: sp["fingerprint"] for t, sp in self.online.specs.items()})
            held = {t: reader.stats_of(t) for t in cfg.online if t in reader.manifest.teachers}
            warm = CacheStream(cfg.cache, cached, **stream_kw)  # the same batches on every rank: the same statistics
            stats, self.online_origin = self.online.statistics(
                held, warm, grid, self.out, self.acc.device, write=self.acc.is_main_process
            )
            self.stats.update(stats)
            grids.update({t: grid for t in cfg.online})
        summary_teachers = [t for t in cfg.teachers if self.specs[t].get("summary_dim")]
        if cfg.student.summary_teachers:  # the order of the student's summary tokens, as the user set it
            require(
                sorted(cfg.student.summary_teachers) == sorted(summary_teachers),
                "student.summary_teachers",
                cfg.student.summary_teachers,
                f"each teacher with a summary ({summary_teachers}) once, in the order of the student's summary tokens",
            )
            summary_teachers = list(cfg.student.summary_teachers)
        # the position grid defaults to the resolution the student trains at (what its config then says)
        student_cfg = StudentConfig(
            **{**asdict(cfg.student), "summary_teachers": summary_teachers, "img_size": cfg.student.img_size or res}
        )
        ws, p = student_cfg.vitdet_window_size, student_cfg.patch_size
        if ws:
            sizes = sorted({res, *cfg.resolution.resolutions})
            sizes = sorted({*sizes, *(r - cfg.loss.shift_px for r in sizes)})  # the shifted crops
            bad = [r for r in sizes if (r // p) % ws]
            require(
                not bad,
                "student.vitdet_window_size",
                ws,
                f"a divisor of the patch grid at every training resolution {sizes}",
                f"{bad} px give grids of {[r // p for r in bad]} patches; choose a window dividing "
                f"{sorted({r // p for r in sizes})}, or resolutions that are multiples of {ws * p} px",
            )
        adapters = [
            AdapterConfig(
                name=t,
                summary_dim=self.specs[t].get("summary_dim"),
                feature_dim=self.specs[t]["feature_dim"],
                feature_grid=grids[t],
                hidden=cfg.adapter_hidden,
            )
            for t in cfg.teachers
        ]
        self.student_cfg, self.adapter_cfgs = student_cfg, adapters
        self.model = DistillModel(student_cfg, adapters)
        above = [r for r in cfg.resolution.resolutions if r > res]
        if above:
            raise ConfigError(
                f"'resolution.resolutions' {cfg.resolution.resolutions}: {above} above the {res}px "
                f"views cache {cfg.cache} stores. Views are stored at the highest resolution "
                f"a run trains at: build a cache with student_resolution={max(above)} "
                "(and lower_resolutions=[...] for the others)"
            )
        self.stream = CacheStream(
            cfg.cache,
            cached,
            rank=self.acc.process_index,
            world_size=self.acc.num_processes,
            num_workers=self.workers,
            schedule=cfg.resolution,
            **stream_kw,
        )
        self.resolutions = self.stream.schedule.resolutions
        self.loader = make_loader(self.stream, cfg.loader, self.workers)
        self.steps_per_epoch = [
            math.ceil(self.stream.batches_per_reader(e) * self.stream.num_workers / self.accum)
            for e in range(cfg.epochs)
        ]
        self.total_steps = sum(self.steps_per_epoch)
        decay, no_decay = [], []
        skip = self.model.no_weight_decay()  # the model says which parameters take no decay (timm's rule)
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or n in skip else decay).append(p)
        fused = {"fused": True} if torch.cuda.is_available() else {}
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            **fused,
        )
        if cfg.compile:
            self.model.compile()  # in place: parameter names and checkpoints stay those of the plain model
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lr_lambda(self.total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        )
        self.model, self.opt, self.sched = self.acc.prepare(self.model, self.opt, self.sched)
        self.cached = cached
        self.state = TrainState()
        self.history: list[dict] = []
        self.last_metrics: dict[str, float] = {}  # the last logged step's values: the logged model's training figures
        self.last_metrics_step = 0
        self.logged_until = (
            0  # the last step already in the MLflow run (a resumed run's replayed steps are not logged again)
        )

    def partitions_line(self) -> str:
        """Each resolution partition and the stored grids its sizes read, per teacher (mode=partitions)."""
        parts = []
        for part in self.cfg.resolution.partitions:
            grids = {}
            for t, lay in self.stream.layouts.items():
                got = {self.stream.served[r][t] or tuple(lay.grid) for r in part}
                grids[t] = "/".join(f"{g[0]}x{g[1]}" for g in sorted(got))
            parts.append(f"{part} from {', '.join(f'{t} {g}' for t, g in grids.items())}")
        return (
            f"one batch of each resolution partition per step ({self.accum} batches per optimizer step): "
            + "; ".join(parts)
        )

    # -- checkpoints -------------------------------------------------------------------------
    def _ckpt_dir(self, step: int) -> Path:
        return self.out / "checkpoints" / f"step-{step:08d}"

    def save_checkpoint(self):
        d = self._ckpt_dir(self.state.step)
        self.acc.wait_for_everyone()
        try:
            self.acc.save_state(str(d))
            self.acc.wait_for_everyone()  # every rank's files are on disk before they are checksummed
            if self.acc.is_main_process:
                (d / "trainer_state.json").write_text(
                    json.dumps({**asdict(self.state), "last_good": str(d), "history": self.history})
                )
                write_checksums(d, self.out)
        except Exception as e:
            full = disk_full(e, d)
            if full is None:
                raise
            shutil.rmtree(
                d, ignore_errors=True
            )  # a partial checkpoint is never used (`latest` still names the last complete one)
            kept = (
                f"the last complete checkpoint, {self.state.last_good}, is kept"
                if self.state.last_good
                else "no checkpoint was complete yet"
            )
            raise DiskFull(
                f"no space left writing checkpoint {d} ({full}): the partial checkpoint "
                f"was removed and {kept}. Free space under {self.out} and resume with resume=true"
            ) from None
        if self.acc.is_main_process:
            self.state.last_good = str(d)
            # `latest` is written last: a checkpoint is used only once it is complete
            tmp = self.out / "checkpoints" / ".latest.tmp"
            tmp.write_text(d.name)
            os.replace(tmp, self.out / "checkpoints" / "latest")
            ckpts = sorted(p for p in (self.out / "checkpoints").glob("step-*") if p.is_dir())
            for old in ckpts[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def try_resume(self, d: Path) -> bool:
        """Load checkpoint ``d`` (already checked against its checksums by :func:`resume_checkpoint`)."""
        try:
            self.acc.load_state(str(d))
            saved = json.loads((d / "trainer_state.json").read_text())
            self.history = saved.pop("history", [])
            self.state = TrainState(**saved)
        except (
            Exception
        ) as e:  # checksums matched, so the files are as written: a checkpoint of another model or version
            raise CheckpointError(
                f"checkpoint {d} cannot be resumed by this run ({type(e).__name__}: {str(e).splitlines()[0][:300]}): "
                f"it was written for other settings. {_restart_hint(d.parent.parent, d)}"
            ) from None
        return True

    # -- the loop ----------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One micro-step. Returns the detached loss terms as device tensors: nothing here waits for the device."""
        keep = batch["weight"] > 0  # a CPU tensor: no device sync
        scale = 1.0
        if not keep.any():  # a padding-only batch: run one row with zero weight to stay in lockstep
            keep = torch.zeros_like(keep)
            keep[0] = True
            scale = 0.0
        if not keep.all():
            batch = _select(batch, keep)
        device = self.acc.device
        images = batch["image"].to(device, non_blocking=True)
        targets = prepare_targets(batch, self.cached, self.stats, device)
        if self.online is not None:
            p = self.cfg.student.patch_size
            for t, raw in self.online.targets(images, (images.shape[2] // p, images.shape[3] // p)).items():
                targets[t] = self.stats[t].normalize(raw)
        if self.cfg.loss.shift_px:
            m = self.cfg.loss.shift_px
            seed = [self.cfg.seed, self.state.epoch, self.state.batch_in_epoch, self.acc.process_index, 0x5F1]
            offsets = draw_offsets(
                images.shape[0], m, seed, self.cfg.loss.shift_step_px or self.cfg.student.patch_size
            )  # a pure function of the step: resume draws the same
            images, targets = shift_batch(images, targets, m, self.cfg.student.patch_size, offsets)
        with self.acc.accumulate(self.model):
            preds = self.model(images)
            losses = distill_loss(preds, targets, self.cfg.loss)
            self.acc.backward(losses["loss"] * scale)
            grad_norm = (
                self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
                if self.acc.sync_gradients
                else None
            )
            self.opt.step()
            self.sched.step() if self.acc.sync_gradients else None
            self.opt.zero_grad(set_to_none=True)
        # training-batch cosines (and summary angles) are logged as fidelity/...: after eval/ in MLflow's alphabetical
        # tables; a balanced summary loss's per-teacher spreads as balance/<t>/summary_spread_deg
        out = {_metric_key(k): v.detach() for k, v in losses.items()}
        if grad_norm is not None:
            out["grad_norm"] = torch.as_tensor(grad_norm, device=device).detach().float()
        return out

    def read_metrics(self) -> dict[str, float]:
        """Means of the loss terms accumulated since the last read: the one host sync every ``log_every`` steps.

        Also the NaN/Inf guard: a non-finite loss stops training here, naming the last good checkpoint (every
        checkpoint is written only after such a read, so it never holds a diverged model).
        """
        if not self._sums:
            return {}
        keys = list(self._sums)
        values = (torch.stack([self._sums[k].float() for k in keys]) / self._count).tolist()
        out = dict(zip(keys, values, strict=True))
        first, last = self._since + 1, self.state.step
        self._sums, self._count, self._since = {}, 0, self.state.step
        if not math.isfinite(out["loss"]):
            steps = f"step {last}" if first >= last else f"steps {first}-{last}"
            raise TrainingDiverged(
                f"loss is {out['loss']} in {steps} (losses are read every log_every={self.cfg.log_every} "
                f"steps): stopping. The last good checkpoint is {self.state.last_good or '(none yet)'}; "
                "lower optim.lr or check the cache's statistics."
            )
        return out

    def _accumulate(self, metrics: dict[str, torch.Tensor]):
        for k, v in metrics.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._count += 1

    def fit(self, tracker) -> TrainState:
        cfg = self.cfg
        max_steps = cfg.max_steps if cfg.max_steps is not None else self.total_steps
        self._sums, self._count, self._since = {}, 0, self.state.step
        restore = self._catch_ctrl_c()
        try:
            return self._fit(tracker, max_steps)
        finally:
            restore()

    def _catch_ctrl_c(self):
        """The first Ctrl-C asks the loop to stop after the current step, with a checkpoint there (a stop in
        the middle of a step could not be resumed exactly); a second one stops at once."""
        import signal
        import threading

        self._stop = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_sigint(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
            if self.acc.is_main_process:
                print(
                    "\n[radio train] Ctrl-C: finishing this step, then writing a checkpoint "
                    "(Ctrl-C again to stop at once)",
                    file=sys.stderr,
                    flush=True,
                )

        previous = signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, previous)

    def _should_stop(self, at_sync: bool) -> bool:
        """Whether every process saw Ctrl-C. One process decides alone; several agree at the metric syncs
        (an all-reduce there costs nothing extra), so they all stop at the same step."""
        if self.acc.num_processes == 1:
            return self._stop
        if not at_sync:
            return False
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item() > 0)

    def _fit(self, tracker, max_steps: int) -> TrainState:
        cfg = self.cfg
        t_last = time.perf_counter()
        images = 0
        wait_s = step_s = 0.0
        while self.state.epoch < cfg.epochs and self.state.step < max_steps:
            self.stream.set_epoch(self.state.epoch, skip_batches=self.state.batch_in_epoch)
            audit: list = []
            t_wait = time.perf_counter()
            batches = self.loader if self.workers > 0 else ThreadPrefetcher(self.loader, cfg.loader.prefetch_factor)
            for batch in batches:
                t_got = time.perf_counter()
                if cfg.audit_keys:
                    audit += [
                        (i, int(v))
                        for i, v, w in zip(batch["image_id"], batch["view_index"], batch["weight"], strict=True)
                        if w > 0
                    ]
                wait_s += t_got - t_wait
                self._accumulate(self.train_step(batch))
                self.state.batch_in_epoch += 1
                images += int(batch["weight"].sum())
                if self.acc.sync_gradients:
                    self.state.step += 1
                    checkpoint = self.state.step % cfg.checkpoint_every == 0
                    if self.state.step % cfg.log_every == 0 or checkpoint or self.state.step >= max_steps:
                        metrics = self.read_metrics()  # the host sync; raises on a non-finite loss
                        now = time.perf_counter()
                        step_s = now - t_last
                        metrics.update(
                            {
                                "images_per_s": images * self.acc.num_processes / step_s if step_s > 0 else 0.0,
                                "data_wait_fraction": wait_s / step_s if step_s > 0 else 0.0,
                                "epoch": self.state.epoch,
                                "lr": self.sched.get_last_lr()[0],
                            }
                        )
                        self.history.append({"step": self.state.step, "loss": metrics["loss"]})
                        self.last_metrics, self.last_metrics_step = metrics, self.state.step
                        if self.state.step > self.logged_until:  # a resumed run does not log a replayed step twice
                            tracker.log_metrics(
                                metric_names(metrics), step=self.state.step, wait=False
                            )  # sent from a background thread
                        self._progress(metrics, max_steps)
                        t_last, images, wait_s = now, 0, 0.0
                    if checkpoint:
                        self.save_checkpoint()
                    if self._should_stop(at_sync=self.state.step % cfg.log_every == 0):
                        self.read_metrics()
                        if not checkpoint:
                            self.save_checkpoint()
                        raise TrainingInterrupted(
                            f"interrupted at step {self.state.step}; checkpoint "
                            f"{self._ckpt_dir(self.state.step)} written"
                        )
                    if self.state.step >= max_steps:
                        break
                t_wait = time.perf_counter()
            if self.state.batch_in_epoch < len(self.stream):
                break  # stopped by max_steps inside the epoch
            if cfg.audit_keys:
                d = self.out / "audit"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"epoch{self.state.epoch}-rank{self.acc.process_index}.json").write_text(json.dumps(audit))
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
        return self.state

    def _progress(self, metrics: dict, max_steps: int):
        """A line on stderr every ~10 s (and at the end) from the main process: step, loss, speed, ETA."""
        now = time.perf_counter()
        if not hasattr(self, "_t_progress"):
            self._t_progress, self._t0, self._step0 = now, now, self.state.step - 1
        last = self.state.step >= max_steps
        if not self.acc.is_main_process or (now - self._t_progress < 10.0 and not last):
            return
        self._t_progress = now
        rate = (self.state.step - self._step0) / max(1e-9, now - self._t0)
        eta = (max_steps - self.state.step) / rate if rate > 0 else float("nan")
        print(
            f"[radio train] step {self.state.step}/{max_steps}  epoch {self.state.epoch} "
            f" loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  {metrics['images_per_s']:.0f} "
            f"img/s  ETA {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    def export(self) -> Path:
        d = self.out / "student"
        if self.acc.is_main_process:
            try:
                self._save_student(d)
            except Exception as e:
                full = disk_full(e, d)
                if full is None:
                    raise
                raise DiskFull(
                    f"no space left exporting the student to {d} ({full}): the final checkpoint "
                    f"{self.state.last_good} is kept. Free space and rerun with resume=true to export it"
                ) from None
        self.acc.wait_for_everyone()
        return d

    def _save_student(self, d: Path):
        meta = {
            "teachers": self.specs,
            "fingerprints": self.fingerprints,
            "stats": {t: s.to_dict() for t, s in self.stats.items()},
            "cache": self.cfg.cache,
            "cache_id": self.reader.manifest.cache_id,
            "mlflow_run_id": self.state.run_id,
            "resolution": self.reader.manifest.student_resolution,
        }
        save_student(d, self.acc.unwrap_model(self.model), meta)


def _loss_figure(history: list[dict], path: Path) -> bool:
    """The loss curve as a PNG; False (and one line) where matplotlib is not installed (e.g. a bare GPU host)."""
    try:
        import matplotlib
    except ImportError:
        print(
            f"[radio train] matplotlib is not installed: {path} not drawn (the losses are in trainer_state.json)",
            file=sys.stderr,
        )
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("total loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


CHECKSUMS = "checksums.json"


def _digest(path: Path) -> dict:
    with open(path, "rb") as f:
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def write_checksums(d: Path, out: Path) -> None:
    """Record the size and sha256 of every file of checkpoint ``d`` (weights, optimizer, scheduler, random
    states, trainer state) and of the run's online statistics, which a resume reuses."""
    rec = {
        "files": {
            str(p.relative_to(d)): _digest(p) for p in sorted(d.rglob("*")) if p.is_file() and p.name != CHECKSUMS
        }
    }
    online = out / OnlineTeachers.STATS_FILE
    if online.is_file():
        rec["online_stats"] = _digest(online)
    tmp = d / f".{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, d / CHECKSUMS)


def _restart_hint(out: Path, but: Path | None = None) -> str:
    ckpts = sorted(
        p.name
        for p in (out / "checkpoints").glob("step-*")
        if (p / CHECKSUMS).is_file() and p.name != getattr(but, "name", None)
    )
    older = (
        f"resume from another checkpoint with resume=true resume_from=<one of {', '.join(ckpts)}>, or " if ckpts else ""
    )
    return f"Choose: {older}start afresh with resume=false and another output= (or delete {out})"


def checkpoint_problems(d: Path, out: Path) -> list[str]:
    """What in checkpoint ``d`` differs from its recorded checksums (missing, other size, other sha256)."""
    try:
        rec = json.loads((d / CHECKSUMS).read_text())
        files = rec["files"]
    except FileNotFoundError:
        return [f"{d / CHECKSUMS} is missing (the checkpoint was not completed, or predates checksums)"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{d / CHECKSUMS} cannot be read ({type(e).__name__})"]
    expect = {d / rel: v for rel, v in files.items()}
    if "online_stats" in rec:
        expect[out / OnlineTeachers.STATS_FILE] = rec["online_stats"]
    problems = []
    for path, want in expect.items():
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        got = _digest(path)
        if got["bytes"] != want["bytes"]:
            problems.append(f"{path} has {got['bytes']} bytes, {want['bytes']} were written")
        elif got["sha256"] != want["sha256"]:
            problems.append(f"{path} does not match its recorded sha256 (changed since it was written)")
    return problems


def resume_checkpoint(out: Path, name: str | None = None) -> Path | None:
    """The checkpoint a resume continues from (``name`` under OUTPUT/checkpoints, else the latest), its files
    checked against their checksums; None when the output holds none. A damaged one is refused naming the
    file and the choices."""
    ckdir = out / "checkpoints"
    if name is None:
        latest = ckdir / "latest"
        if not latest.is_file():
            return None
        name = latest.read_text().strip()
    d = ckdir / Path(name).name
    if not d.is_dir():
        raise ConfigError(f"resume_from={name}: no checkpoint {d}. {_restart_hint(out)}")
    problems = checkpoint_problems(d, out)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): {'; '.join(problems[1:3])})" if len(problems) > 1 else ""
        raise CheckpointError(
            f"checkpoint {d} is damaged: {problems[0]}{more}. Nothing was resumed from it. {_restart_hint(out, d)}"
        )
    return d


def validate_student(sc: StudentConfig, teachers) -> None:
    """The student's settings: every size and count in range, names that exist, a normalization that divides."""
    from radio.student import SIZES

    require(sc.size in SIZES, "student.size", sc.size, f"one of {list(SIZES)}", nearest_hint(sc.size, list(SIZES)))
    require(1 <= sc.patch_size <= 64, "student.patch_size", sc.patch_size, "in [1, 64]")
    for key in ("dim", "depth", "heads"):
        v = getattr(sc, key)
        require(v is None or v >= 1, f"student.{key}", v, ">= 1 (or null for the size's value)")
    dim, _, heads = sc.shape
    require(
        dim % heads == 0,
        "student.dim",
        dim,
        f"a multiple of student.heads ({heads}), each head taking dim / heads channels",
        f"e.g. student.dim={max(heads, round(dim / heads) * heads)}",
        also=("student.heads",),
    )
    require(0 < sc.mlp_ratio <= 16 and math.isfinite(sc.mlp_ratio), "student.mlp_ratio", sc.mlp_ratio, "in (0, 16]")
    require(0 <= sc.num_registers <= 64, "student.num_registers", sc.num_registers, "in [0, 64]")
    require(0 <= sc.drop_path < 1, "student.drop_path", sc.drop_path, "in [0, 1) (the last block's drop rate)")
    for key in ("img_size", "cpe_max_img_size"):
        v = getattr(sc, key)
        require(
            v is None or 1 <= v <= 4096,
            f"student.{key}",
            v,
            "in [1, 4096] (or null)",
        )
    unknown = [t for t in sc.summary_teachers if t not in teachers]
    require(
        not unknown,
        "student.summary_teachers",
        sc.summary_teachers,
        f"names from teachers={list(teachers)}",
        nearest_hint(unknown[0], list(teachers)) if unknown else "",
        also=("teachers",),
    )
    for key in ("mean", "std"):
        v = getattr(sc, key)
        require(
            len(v) == 3 and all(math.isfinite(x) for x in v),
            f"student.{key}",
            list(v),
            "three finite numbers (R, G, B)",
        )
    require(all(x > 0 for x in sc.std), "student.std", list(sc.std), "> 0 per channel (images are divided by it)")


def validate(cfg: TrainJobConfig):
    """Settings checked before any work. Each error is a SettingError naming the key, the value and what is
    allowed (``load_config(validate=validate)`` adds where the value came from)."""
    checks = [
        ("epochs", cfg.epochs, 1),
        ("loader.batch_size", cfg.loader.batch_size, 1),
        ("loader.shuffle_buffer", cfg.loader.shuffle_buffer, 1),
        ("loader.read_rows", cfg.loader.read_rows, 1),
        ("loader.fetch_ahead", cfg.loader.fetch_ahead, 1),
        ("loader.prefetch_factor", cfg.loader.prefetch_factor, 1),
        ("checkpoint_every", cfg.checkpoint_every, 1),
        ("log_every", cfg.log_every, 1),
        ("keep_checkpoints", cfg.keep_checkpoints, 1),
        ("optim.grad_accum", cfg.optim.grad_accum, 1),
        ("optim.warmup_steps", cfg.optim.warmup_steps, 0),
        ("adapter_hidden", cfg.adapter_hidden, 1),
    ]
    if cfg.max_steps is not None:
        checks.append(("max_steps", cfg.max_steps, 0))  # 0: export the initialized student (an untrained baseline)
    if cfg.loader.num_workers is not None:
        checks.append(("loader.num_workers", cfg.loader.num_workers, 0))
    for key, value, least in checks:
        require(value >= least, key, value, f">= {least}")
    require(
        cfg.resume or cfg.resume_from is None,
        "resume_from",
        cfg.resume_from,
        "set only with resume=true",
        "Add resume=true to continue from that checkpoint",
    )
    require(cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "> 0")
    require(cfg.optim.weight_decay >= 0, "optim.weight_decay", cfg.optim.weight_decay, ">= 0")
    require(
        bool(cfg.teachers),
        "teachers",
        cfg.teachers,
        "at least one teacher",
        "List the teachers to distill, e.g. teachers=[tiny-clip,tiny-dinov2]",
    )
    unknown = sorted(set(cfg.online) - set(cfg.teachers))
    require(
        not unknown,
        "online",
        sorted(cfg.online),
        f"a subset of teachers={list(cfg.teachers)}",
        "List every teacher in `teachers`, and the ones to run in the step under `online`",
    )
    validate_student(cfg.student, cfg.teachers)
    named = (
        [
            (f"resolution.partitions[{i}][{j}]", r)
            for i, part in enumerate(cfg.resolution.partitions)
            for j, r in enumerate(part)
        ]
        if cfg.resolution.mode == "partitions"
        else [(f"resolution.resolutions[{i}]", r) for i, r in enumerate(cfg.resolution.resolutions)]
    )
    for key, r in named:
        require(
            cfg.student.patch_size <= r <= 8192 and r % cfg.student.patch_size == 0,
            key,
            r,
            f"a positive multiple of student.patch_size ({cfg.student.patch_size}), at most 8192",
            also=("student.patch_size",),
        )
    dup = sorted({r for r in cfg.resolution.resolutions if cfg.resolution.resolutions.count(r) > 1})
    require(
        not dup,
        "resolution.resolutions",
        cfg.resolution.resolutions,
        f"distinct resolutions ({dup} repeated)",
        "List each once; with mode=sample, resolution.weights sets how often each is drawn",
    )
    sp = cfg.loss.shift_px
    require(
        sp >= 0 and sp % cfg.student.patch_size == 0,
        "loss.shift_px",
        sp,
        f"0 (off) or a positive multiple of student.patch_size ({cfg.student.patch_size}), so the shifted crop's "
        "grid is whole",
        f"e.g. loss.shift_px={cfg.student.patch_size}",
        also=("student.patch_size",),
    )
    step = cfg.loss.shift_step_px
    require(
        step is None or step >= 1,
        "loss.shift_step_px",
        step,
        ">= 1 pixel, or null for whole patches (the targets are then the stored cells themselves)",
    )
    small = [r for r in cfg.resolution.resolutions if r - sp < cfg.student.patch_size]
    require(
        not sp or not small,
        "loss.shift_px",
        sp,
        f"smaller than every training resolution by at least a patch ({small} px leave no crop)",
        also=("resolution.resolutions",),
    )
    # the loss: weights are non-negative, name listed teachers, and leave something to learn
    lc = cfg.loss
    for t, w in lc.weights.items():
        require(
            t in cfg.teachers,
            f"loss.weights.{t}",
            w,
            f"the weight of one of teachers={list(cfg.teachers)}",
            nearest_hint(t, list(cfg.teachers)).strip(),
            also=("teachers",),
        )
        require(w >= 0 and math.isfinite(w), f"loss.weights.{t}", w, ">= 0 (0 leaves the teacher out of the loss)")
    require(
        any(lc.weights.get(t, 1.0) > 0 for t in cfg.teachers),
        "loss.weights",
        dict(lc.weights),
        "> 0 for at least one teacher",
        also=("teachers",),
    )
    for key in ("summary_weight", "feature_weight", "feature_cos", "feature_smooth_l1", "smooth_l1_beta"):
        v = getattr(lc, key)
        require(v >= 0 and math.isfinite(v), f"loss.{key}", v, ">= 0")
    require(
        lc.summary_weight + lc.feature_weight > 0,
        "loss.feature_weight",
        lc.feature_weight,
        "> 0 when loss.summary_weight is 0 (nothing would be learned)",
        also=("loss.summary_weight",),
    )
    require(
        lc.feature_cos + lc.feature_smooth_l1 > 0 or lc.feature_weight == 0,
        "loss.feature_cos",
        lc.feature_cos,
        "> 0 when loss.feature_smooth_l1 is 0 (the feature loss would be zero)",
        also=("loss.feature_smooth_l1",),
    )
    oc = cfg.optim
    require(oc.grad_clip > 0, "optim.grad_clip", oc.grad_clip, "> 0 (the largest gradient norm kept)")
    require(
        0 <= oc.min_lr_ratio <= 1,
        "optim.min_lr_ratio",
        oc.min_lr_ratio,
        "in [0, 1] (the cosine's floor as a share of optim.lr)",
    )
    for i, b in enumerate(oc.betas):
        require(0 <= b < 1, f"optim.betas[{i}]", b, "in [0, 1)")
    for t, oc_t in cfg.online.items():
        require(
            oc_t.stats_batches >= 1,
            f"online.{t}.stats_batches",
            oc_t.stats_batches,
            ">= 1 (warm-up batches for the statistics when the cache holds none)",
        )
    require(
        cfg.standardize == "channel" or not cfg.online,
        "standardize",
        cfg.standardize,
        "channel when teachers run online",
        "PHI-S is fitted to a cache's exact second moments; online teachers "
        "have none. Use standardize=channel, or cache those teachers",
    )
    check_output_dir(cfg.output)


def train(cfg: TrainJobConfig, resolved_yaml: str | None = None, resume_command: str | None = None) -> dict:
    """Run (or resume) a training. Returns {"run_id", "output", "student", "step", "history"}.

    ``resume_command``: what Ctrl-C tells the user to run (default: a generic hint)."""
    resolved_yaml = resolved_yaml or config_to_yaml(cfg)
    validate(cfg)
    if cfg.mlflow.enabled:
        check_tracking_uri(tracking_uri(cfg.mlflow))  # fail fast, before any work
    out = Path(cfg.output)
    if out.exists() and (out / "checkpoints" / "latest").exists() and not cfg.resume:
        raise ConfigError(
            f"output {out} already holds a training run; pass resume=true to continue it, or choose another output="
        )
    ckpt = resume_checkpoint(out, cfg.resume_from) if cfg.resume else None  # checked before any work
    if ckpt is None:
        (out / OnlineTeachers.STATS_FILE).unlink(
            missing_ok=True
        )  # a new run computes its own; only a checked resume reuses them
    trainer = Trainer(cfg, resolved_yaml)
    acc = trainer.acc
    resumed = ckpt is not None and trainer.try_resume(ckpt)
    tracker = NullRun()
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(resolved_yaml)
        cache_run = trainer.reader.manifest.mlflow_run_id
        tags = {
            "radio.kind": "student",
            "radio.student_size": cfg.student.size,
            "radio.teachers": ",".join(cfg.teachers),
            "radio.cache_id": trainer.reader.manifest.cache_id,
            "radio.cache_uri": cfg.cache,
            "radio.output": str(out.resolve()),
        }
        if cache_run:
            tags["radio.cache_run_id"] = cache_run
        if cfg.online:
            tags["radio.online_teachers"] = ",".join(cfg.online)
        if cfg.mlflow.enabled and (out / PENDING).is_file():  # what an earlier run of this output could not send
            try:
                print(
                    f"[radio train] sent {replay_pending(out)} MLflow record(s) kept by the earlier run",
                    file=sys.stderr,
                )
            except Exception as e:
                print(f"[radio train] {e}", file=sys.stderr)
        tracker = start_run(
            cfg.mlflow,
            run_name=cfg.run_name or out.name,
            tags=tags,
            run_id=trainer.state.run_id if resumed else None,
            pending=out / PENDING,
        )
        if resumed:
            trainer.logged_until = tracker.last_step("train/loss") or 0
        if not resumed:
            params = flatten_config(cfg)
            params.update(
                {f"cache.fingerprint.{t}": fp for t, fp in trainer.fingerprints.items() if t not in cfg.online}
            )
            params.update({f"online.fingerprint.{t}": trainer.fingerprints[t] for t in cfg.online})
            params.update({f"online.stats.{t}": origin for t, origin in trainer.online_origin.items()})
            params["total_steps"] = trainer.total_steps
            tracker.log_params(params)
            tracker.log_text(resolved_yaml, "config.yaml")
            log_cache_input(
                tracker,
                cfg.cache,
                trainer.reader.manifest,
                "training",
                [t for t in cfg.teachers if t not in cfg.online],
            )
            if cfg.online:
                tracker.log_artifact(str(out / OnlineTeachers.STATS_FILE))
        trainer.state.run_id = tracker.run_id
        monitor = _system_metrics(tracker.run_id, tracking_uri(cfg.mlflow) if cfg.mlflow.enabled else None)
        if monitor is not None:
            tracker.on_offline.append(monitor.stop)  # its samples cannot be kept: stop sampling, not the training
    else:
        monitor = None
    if acc.is_main_process:
        steps = trainer.total_steps if cfg.max_steps is None else min(cfg.max_steps, trainer.total_steps)
        plan = f"{steps} steps" + (
            f" (max_steps; {cfg.epochs} epochs would be {trainer.total_steps})"
            if steps < trainer.total_steps
            else f" over {cfg.epochs} epochs"
        )
        run = f"; MLflow run {tracker.run_id}" if tracker.run_id else ""
        print(
            f"[radio train] {'resuming at step ' + str(trainer.state.step) if resumed else 'starting'}: "
            f"{plan}, {acc.num_processes} process(es) on {acc.device}{run}",
            file=sys.stderr,
        )
        if cfg.resolution.mode == "partitions" and acc.is_main_process:
            print(f"[radio train] {trainer.partitions_line()}", file=sys.stderr)
    try:
        trainer.fit(tracker)
    except TrainingDiverged:
        if monitor:
            monitor.finish()
        tracker.end(status="FAILED")
        raise
    except TrainingInterrupted as e:
        if monitor:
            monitor.finish()
        tracker.end(status="KILLED")
        hint = resume_command or f"the same radio train command with resume=true (output={cfg.output})"
        raise TrainingInterrupted(f"radio train: {e}. Resume with:\n  {hint}") from None
    except BaseException:
        if monitor:
            monitor.finish()
        tracker.end(status="KILLED")
        raise
    if trainer.state.step % cfg.checkpoint_every != 0:
        trainer.read_metrics()  # a diverged tail is never saved as the final checkpoint
        trainer.save_checkpoint()
    student_dir = trainer.export()
    model_id = None
    if acc.is_main_process:
        fig = out / "loss_curve.png"
        if _loss_figure(trainer.history, fig):
            tracker.log_artifact(str(fig))
        tracker.log_artifact(str(student_dir), "student")
        tracker.set_tags({"radio.steps": trainer.state.step})
        if tracker.run_id:
            model_id = model_id_of(
                _log_model(tracker, student_dir, trainer.reader.manifest.student_resolution, cfg.mlflow.register)
            )
            # the final losses once more, under their own names (a step is never logged twice under one name),
            # against the model and the training cache: the model's page then names that cache among its datasets
            final = {
                k.replace("train/loss", "train/final_loss", 1): v
                for k, v in metric_names(trainer.last_metrics).items()
                if k.startswith("train/loss")
            }
            if model_id and final:
                tracker.log_metrics(
                    final,
                    step=trainer.last_metrics_step,
                    model_id=model_id,
                    dataset=cache_dataset(trainer.reader.manifest),
                )
        if monitor:
            monitor.finish()
        tracker.end()
    page = None
    if model_id and getattr(tracker, "experiment_id", None):
        from .compare import model_page

        page = model_page(tracker.experiment_id, model_id)
    return {
        "run_id": tracker.run_id,
        "model_page": page,
        "output": str(out),
        "student": str(student_dir),
        "step": trainer.state.step,
        "history": trainer.history,
        "main": acc.is_main_process,
    }


SYSTEM_METRICS = ("images_per_s", "data_wait_fraction")


def metric_names(metrics: dict) -> dict:
    """The one naming scheme of logged values: ``train/...`` (losses, lr, epoch), ``system/...`` (throughput,
    waiting), and (from ``radio eval``) ``eval/...``."""
    return {(f"system/{k}" if k in SYSTEM_METRICS else f"train/{k}"): v for k, v in metrics.items()}


def _log_model(tracker, student_dir: Path, resolution: int, register: str | None) -> str | None:
    """The exported student as an MLflow model of the run (and a registered version with ``register``); its
    model URI, or None when it was not logged (or kept for `radio sync`)."""
    try:
        return tracker.log_student_model(str(student_dir), resolution, register)
    except Exception as e:  # the checkpoint is on disk and in the run's artifacts either way
        print(f"[radio train] student not logged as an MLflow model: {type(e).__name__}: {e}", file=sys.stderr)
        return None


class _FlushingMonitor:
    """Publishes one last sample at the end, so even a run shorter than the interval gets system metrics."""

    def __init__(self, monitor):
        self.monitor = monitor

    def stop(self):
        """The store is gone: ask the sampler thread to end, without waiting on its retries or flushing."""
        self.stopped = True
        event = getattr(self.monitor, "_shutdown_event", None)
        if event is not None:
            event.set()

    def finish(self):
        if getattr(self, "stopped", False):
            return
        try:
            self.monitor.collect_metrics()
            self.monitor.publish_metrics(self.monitor.aggregate_metrics())
        except Exception as e:  # never fail a finished training over a system metric
            print(f"[radio train] last system metrics sample not logged: {e}", file=sys.stderr)
        self.monitor.finish()


def _system_metrics(run_id, uri: str | None = None):
    """CPU/memory (and GPU when present) sampled into the run by MLflow's own monitor, in the run's store
    (``uri``; not MLflow's process-wide default, which may name another store)."""
    if run_id is None:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        m = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=1, tracking_uri=uri)
        m.start()
        return _FlushingMonitor(m)
    except Exception as e:  # psutil missing, or an MLflow without the monitor
        print(f"[radio train] system metrics not logged: {e}", file=sys.stderr)
        return None


def main(argv: list[str]) -> int:
    from .config import job_config

    cfg = job_config(
        argv,
        TrainJobConfig,
        "usage: radio train [CONFIG] [key=value ...]\n\nDistill a student from a cache. Keys: `radio config "
        "show train`.",
        validate,
    )
    if cfg is None:
        return 0
    import shlex

    resume = "radio train " + " ".join(shlex.quote(a) for a in argv if not a.startswith("resume=")) + " resume=true"
    result = train(cfg, config_to_yaml(cfg), resume_command=resume)
    if result["main"]:  # one line per training, not one per process
        run = f"; mlflow run {result['run_id']}" if result["run_id"] else ""
        print(f"trained {result['step']} steps; student exported to {result['student']}{run}")
        if result.get("model_page"):
            print(f"its MLflow model: runs:/{result['run_id']}/model; page (with `mlflow ui`): {result['model_page']}")
    return 0
