"""``fit(config, reporter)``: train one trial config on one device. No Ray, no W&B imports.

The loop is deliberately plain (airbench style): per epoch, a device-side permutation, batched
on-device augmentation, forward/backward, metrics accumulated on the device and synchronised once
at the epoch's end. Everything outside — progress bars, Ray Train, W&B — is a ``Reporter``.
When ``torch.distributed`` is initialised (DDP through Ray Train), the model is wrapped and
metrics are all-reduced; only rank 0 writes checkpoints.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rayclf.config import TrialConfig, UserError
from rayclf.data.augment import AlternatingFlip, Augmenter, Targets
from rayclf.data.loader import DeviceLoader
from rayclf.data.sources import Dataset, load_dataset
from rayclf.identity import trial_id
from rayclf.metrics import lower_is_better
from rayclf.models import count_params, create_model
from rayclf.models.hooks import hooks
from rayclf.train.checkpoint import load_checkpoint, save_checkpoint
from rayclf.train.lookahead import Lookahead
from rayclf.train.optim import (
    Schedule,
    create_optimizer,
    penalized_weights,
    penalty_coefficients,
    weight_penalty,
)
from rayclf.train.phases import PhaseSpec, phase_plan, set_trainable

STATUSES = ("completed", "stopped_early", "diverged", "failed")
MISCLASSIFIED_KEPT = 16


class Reporter(Protocol):
    """Where the engine sends progress; CLI progress, Ray Train and W&B implement it. A reporter may also
    have ``step(done, steps, images)``, called after every training step (the terminal's progress bar)."""

    def epoch(self, metrics: dict[str, Any], checkpoint_dir: Path | None, final: bool = False) -> None:
        """One epoch's metrics; ``final`` marks the last epoch (``end`` follows right after)."""

    def should_stop(self) -> bool: ...

    def end(self, summary: dict[str, Any]) -> None: ...


class NullReporter:
    def epoch(self, metrics: dict[str, Any], checkpoint_dir: Path | None, final: bool = False) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def end(self, summary: dict[str, Any]) -> None:
        pass


class MultiReporter:
    """Fan an engine's reports out to several reporters (e.g. Ray Train and W&B)."""

    def __init__(self, *reporters: Reporter | None):
        self.reporters = [r for r in reporters if r is not None]

    def epoch(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None, final: bool = False) -> None:
        for r in self.reporters:
            r.epoch(metrics, checkpoint_dir, final)

    def should_stop(self) -> bool:
        return any(r.should_stop() for r in self.reporters)

    def end(self, summary: dict[str, Any]) -> None:
        for r in self.reporters:
            r.end(summary)


@dataclass
class TrialResult:
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.summary["status"]


# ------------------------------------------------------------------------------------ environment
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            rank = dist.get_rank() % torch.cuda.device_count() if dist.is_initialized() else torch.cuda.current_device()
            return torch.device("cuda", rank)
        return torch.device("cpu")
    return torch.device(name)


def autocast_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    p = cfg.train.precision
    if p == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p]


def uses_channels_last(cfg: TrialConfig, device: torch.device) -> bool:
    return cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type == "cuda")


def evaluator_for(cfg: TrialConfig, model: nn.Module, mean: Any, std: Any, device: torch.device) -> Evaluator:
    """The trial's own evaluation path around an already-built model (``predict`` uses this)."""
    channels_last = uses_channels_last(cfg, device)
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    augmenter = Augmenter(cfg.augment, tuple(mean), tuple(std), device, seed=0)
    return Evaluator(model, augmenter, cfg.train.tta, device, autocast_dtype(cfg, device), channels_last)


def world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# ------------------------------------------------------------------------------------ one epoch
def soft_cross_entropy(logits: torch.Tensor, t: Targets, smoothing: float) -> torch.Tensor:
    if t.y_b is t.y_a:
        return F.cross_entropy(logits, t.y_a, label_smoothing=smoothing)
    la = F.cross_entropy(logits, t.y_a, label_smoothing=smoothing, reduction="none")
    lb = F.cross_entropy(logits, t.y_b, label_smoothing=smoothing, reduction="none")
    return (t.lam * la + (1 - t.lam) * lb).mean()


@dataclass
class Evaluator:
    """Logits for uint8 batches exactly as training evaluates them: normalise, autocast, TTA views.

    Validation, the trial's test and ``rayclf predict`` all go through here, so they cannot drift apart."""

    net: nn.Module
    augmenter: Augmenter
    tta: str
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool

    def _forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.contiguous(memory_format=torch.channels_last) if self.channels_last else z
        return self.net(z).float()

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch, averaged over ``tta``'s views (airbench's weights for shifts)."""
        def flips(z: torch.Tensor) -> torch.Tensor:
            out = self._forward(z)
            return out if self.tta == "none" else 0.5 * (out + self._forward(z.flip(3)))

        logits = flips(x)
        if self.tta == "flip_translate":
            h, w = x.shape[2:]
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            logits = 0.5 * logits + 0.25 * (flips(padded[..., :h, :w]) + flips(padded[..., 2:, 2:]))
        return logits

    @torch.no_grad()
    def logits(self, xb: torch.Tensor) -> torch.Tensor:
        """A uint8 batch → float logits."""
        with torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext():
            return self.views(self.augmenter.eval_batch(xb))


@dataclass
class Trainer:
    """The pieces of one trial that live across epochs (so checkpoints can capture them)."""

    cfg: TrialConfig
    model: nn.Module
    net: nn.Module  # the model as trained: maybe DDP-wrapped and/or compiled
    augmenter: Augmenter
    train_loader: DeviceLoader
    eval_loaders: dict[str, DeviceLoader]
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    num_classes: int
    flipper: AlternatingFlip | None = None
    lookahead: Lookahead | None = None
    # called after every training step with (steps done, steps in the epoch, images so far): host-side counts
    # only, so a progress bar never forces a device sync
    on_step: Callable[[int, int, int], None] | None = None

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext()

    def train_epoch(self, opt: torch.optim.Optimizer, sched: Schedule, epoch: int,
                    scaler: torch.amp.GradScaler | None, max_steps: int | None = None,
                    data_epoch: int | None = None) -> dict[str, float]:
        """One epoch (or its first ``max_steps`` steps, e.g. for GPU memory calibration).

        ``epoch`` counts within the phase (for the schedule), ``data_epoch`` across the run (for the data)."""
        cfg = self.cfg
        start = time.perf_counter()
        self.net.train()
        data_epoch = epoch if data_epoch is None else data_epoch
        if self.flipper is not None:
            self.flipper.apply(self.train_loader.x, data_epoch)
        hooks(self.model).on_epoch_start(data_epoch)  # e.g. airbench freezes its whitening bias
        if self.lookahead is not None:
            self.lookahead.epoch_start(data_epoch)
        c1, c2 = penalty_coefficients(cfg.reg)
        reg_weights = penalized_weights(self.model, cfg.reg.scope) if (c1 or c2) else []
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss·n, correct, n (n filled at the end)
        count = 0
        steps = len(self.train_loader)
        for step, (xb, yb) in enumerate(self.train_loader):
            if max_steps is not None and step >= max_steps:
                break
            sched.step(epoch + step / steps)
            x, targets = self.augmenter.train_batch(xb, yb)
            with self._autocast():
                logits = self.net(self._prep(x))
                loss = soft_cross_entropy(logits.float(), targets, cfg.train.label_smoothing)
            penalty = weight_penalty(reg_weights, c1, c2)
            total = loss + penalty if penalty is not None else loss
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.unscale_(opt)
            else:
                total.backward()
            if cfg.train.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if self.lookahead is not None:
                self.lookahead.step(data_epoch * steps + step + 1)
            with torch.no_grad():
                pred = logits.argmax(1)
                hit = targets.lam * (pred == targets.y_a) + (1 - targets.lam) * (pred == targets.y_b)
                sums[0] += loss.detach().double() * len(yb)
                sums[1] += hit.sum().double()
            count += len(yb)
            if self.on_step is not None:
                self.on_step(step + 1, steps, count)
        if self.lookahead is not None:
            self.lookahead.epoch_end()
        sums[2] = count
        loss_sum, correct, count = all_sum(sums).tolist()  # the one host sync of the epoch
        seconds = time.perf_counter() - start
        count = max(count, 1.0)
        return {"train_loss": loss_sum / count, "train_accuracy": correct / count,
                "train_seconds": seconds, "images_per_sec": count / max(seconds, 1e-9)}

    @torch.no_grad()
    def eval_penalty(self) -> float:
        """The weight penalty Keras adds to an evaluated loss (``reg.in_val_loss``); 0 otherwise."""
        if not self.cfg.reg.in_val_loss:
            return 0.0
        c1, c2 = penalty_coefficients(self.cfg.reg)
        penalty = weight_penalty(penalized_weights(self.model, self.cfg.reg.scope), c1, c2)
        return 0.0 if penalty is None else float(penalty)

    def evaluator(self) -> Evaluator:
        return Evaluator(self.net, self.augmenter, self.cfg.train.tta, self.device, self.amp, self.channels_last)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch, averaged over ``train.tta``'s views."""
        return self.evaluator().views(x)

    @torch.no_grad()
    def evaluate(self, split: str, confusion: bool = False) -> dict[str, Any]:
        loader = self.eval_loaders.get(split)
        if loader is None or len(loader.y) == 0:
            return {}
        self.net.eval()
        k = self.num_classes
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        cm = torch.zeros(k * k, device=self.device, dtype=torch.int64)
        wrong: list[dict[str, int]] = []
        order = loader.order()
        evaluator = self.evaluator()
        for b, (xb, yb) in enumerate(loader):
            logits = evaluator.logits(xb)
            pred = logits.argmax(1)
            sums[0] += F.cross_entropy(logits, yb, reduction="sum").double()
            cm += torch.bincount(yb * k + pred, minlength=k * k)
            if confusion and len(wrong) < MISCLASSIFIED_KEPT:  # a few examples for tracking (host sync is fine here)
                idx = order[b * loader.batch_size:(b + 1) * loader.batch_size]
                miss = (pred != yb).nonzero().flatten()[: MISCLASSIFIED_KEPT - len(wrong)].tolist()
                wrong += [{"index": int(idx[i]), "true": int(yb[i]), "pred": int(pred[i])} for i in miss]
        all_sum(sums)
        all_sum(cm)
        matrix = cm.view(k, k).cpu()
        n = int(matrix.sum())
        out: dict[str, Any] = {f"{split}_loss": float(sums[0]) / max(n, 1) + self.eval_penalty(),
                               f"{split}_accuracy": float(matrix.diag().sum()) / max(n, 1)}
        if confusion:
            per_class = matrix.diag().double() / matrix.sum(1).clamp(min=1).double()
            out["confusion_matrix"] = matrix.tolist()
            out["per_class_accuracy"] = per_class.tolist()
            out["misclassified"] = wrong
        return out


# ------------------------------------------------------------------------------------ assembly
def build_trainer(cfg: TrialConfig, ds: Dataset) -> Trainer:
    rank, world_size = world()
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(cfg.seed)
    augmenter = Augmenter(cfg.augment, ds.mean, ds.std, device, seed=cfg.seed * 7919 + rank)
    train_x = torch.from_numpy(ds.train.x).to(device)
    train_y = torch.from_numpy(ds.train.y).to(device)
    if cfg.augment.double:
        doubler = Augmenter(cfg.augment, ds.mean, ds.std, device, seed=cfg.seed * 7919 + 104729, online=True)
        train_x, train_y = torch.cat([train_x, doubler.doubled(train_x)]), torch.cat([train_y, train_y])
    loader_gen = torch.Generator(device=device)
    loader_gen.manual_seed(cfg.seed)
    train_loader = DeviceLoader((train_x, train_y), cfg.train.batch_size, device, shuffle=True, drop_last=True,
                                generator=loader_gen, rank=rank, world_size=world_size)
    eval_loaders = {name: DeviceLoader(split, cfg.train.eval_batch_size, device, shuffle=False, rank=rank,
                                       world_size=world_size)
                    for name, split in (("val", ds.val), ("test", ds.test)) if split is not None}
    c, h, _ = ds.shape
    model = create_model(cfg.model, num_classes=ds.num_classes, in_chans=c, image_size=h).to(device)
    hooks(model).init_from_data(train_x, augmenter.eval_batch)  # e.g. airbench's patch whitening
    channels_last = uses_channels_last(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if dist.is_initialized():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile is True or (cfg.train.compile == "auto" and device.type == "cuda"):
        # one on-disk kernel cache per machine: trials of the same shape reuse compiled graphs
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "rayclf" / "inductor"))
        net = torch.compile(net, mode=cfg.train.compile_mode)
    flip = cfg.augment.flip
    flipper = (AlternatingFlip(flip.p, len(train_loader.y), cfg.seed * 7919 + 15485863, device)
               if flip.mode == "alternate" and flip.p > 0 else None)
    la = cfg.train.lookahead
    lookahead = Lookahead(model, la, cfg.total_epochs() * len(train_loader)) if la.every else None
    return Trainer(cfg, model, net, augmenter, train_loader, eval_loaders, device,
                   autocast_dtype(cfg, device), channels_last, ds.num_classes, flipper, lookahead)


@dataclass(frozen=True)
class Probe:
    """What a few of a trial's own training steps measured on this device."""

    steps: int
    seconds_per_step: float  # mean over the timed steps (after the warm-up ones)
    eval_seconds_per_image: float | None  # one pass over the test split, when asked
    peak_bytes: int | None  # CUDA allocator peak over the steps (None on CPU)
    total_bytes: int | None  # the GPU's memory


def probe(cfg: TrialConfig, ds: Dataset, steps: int = 1, warmup: int = 0, evaluate: bool = False,
          clock: Callable[[], float] = time.perf_counter) -> Probe:
    """Build the trial's trainer and take ``warmup`` then ``steps`` of its own training steps (the engine's
    ``train_epoch``), timed by ``clock``; with ``evaluate``, also one timed pass over the test split. One
    function for the pre-flight's step, packing's GPU-memory calibration and the dry run's measured estimate."""
    cuda = resolve_device(cfg.train.device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:  # the peak counts the trial's resident data and model too
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tr = build_trainer(cfg, ds)
    opt = create_optimizer(tr.model, cfg.optim, cuda=cuda)
    scaler = torch.amp.GradScaler("cuda") if cuda and tr.amp == torch.float16 else None
    sched = Schedule(opt, cfg.sched, cfg.total_epochs())
    if warmup:
        tr.train_epoch(opt, sched, 0, scaler, max_steps=warmup)
    sync()
    t0 = clock()
    tr.train_epoch(opt, sched, 0, scaler, max_steps=steps)
    sync()
    per_step = (clock() - t0) / max(steps, 1)
    per_image = None
    if evaluate and len(ds.test):
        t1 = clock()
        tr.evaluate("test")
        sync()
        per_image = (clock() - t1) / len(ds.test)
    peak = int(torch.cuda.max_memory_allocated()) if cuda else None
    total = int(torch.cuda.get_device_properties(tr.device).total_memory) if cuda else None
    del tr, opt
    if cuda:
        torch.cuda.empty_cache()
    return Probe(steps, per_step, per_image, peak, total)


class EarlyStopper:
    """Patience on a chosen metric; remembers the best weights for restoring."""

    def __init__(self, cfg: TrialConfig):
        es = cfg.train.early_stopping
        self.es = es
        self.sign = 1.0 if lower_is_better(es.metric) else -1.0
        self.best = math.inf
        self.bad = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, metrics: dict[str, Any], model: nn.Module) -> bool:
        """Record this epoch; True when patience has run out."""
        if self.es.patience == 0 or self.es.metric not in metrics:
            return False
        value = self.sign * metrics[self.es.metric]
        if value < self.best - self.es.min_delta:
            self.best, self.bad = value, 0
            if self.es.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad += 1
        return self.bad >= self.es.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "best_state": self.best_state}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.best, self.bad, self.best_state = s["best"], s["bad"], s["best_state"]


def _rng_state(trainer: Trainer) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "augment": trainer.augmenter.state_dict(),
             "loader": trainer.train_loader.generator.get_state()}
    if trainer.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(trainer.device)
    return state


def _all_rng_states(trainer: Trainer) -> list[dict[str, Any]]:
    """Every rank's RNG state in rank order (a collective call under DDP): each rank draws its own
    augmentations (seeded by rank), so a checkpoint must hold them all for a resume to be exact."""
    state = _rng_state(trainer)
    if not dist.is_initialized():
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def _own_rng_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """This rank's RNG state from a checkpoint; rank 0's where the checkpoint has none for it (written by an
    older rayclf, or by a run with fewer workers)."""
    ranks, rank = ckpt.get("rng_ranks") or [], world()[0]
    return ranks[rank] if rank < len(ranks) else ckpt["rng"]


def _set_rng_state(trainer: Trainer, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    trainer.augmenter.load_state_dict(state["augment"])
    trainer.train_loader.generator.set_state(state["loader"])
    if "cuda" in state and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], trainer.device)


# ------------------------------------------------------------------------------------ checkpointed state
class TrialState:
    """Everything a checkpoint captures, and the one place that writes and restores it.

    The position is ``epoch`` (epochs finished over the whole run). The optimizer, schedule and
    grad scaler belong to the phase ``epoch`` falls in; a checkpoint taken at a phase boundary
    resumes with the next phase's fresh optimizer and schedule, exactly as an uninterrupted run."""

    def __init__(self, cfg: TrialConfig, tr: Trainer, ds: Dataset):
        self.cfg, self.tr, self.ds = cfg, tr, ds
        self.plan: list[PhaseSpec] = phase_plan(cfg)
        self.stopper = EarlyStopper(cfg)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.phase_index = 0
        self.opt: torch.optim.Optimizer | None = None
        self.sched: Schedule | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self._carried: dict[str, Any] | None = None  # the phase's optimizer/schedule state after a mid-phase resume
        self.checkpoint_at: set[int] = set()  # epochs that always get a checkpoint (a sweep's rungs: pauses)
        self.temporary: list[Path] = []  # checkpoint folders written to the temp dir: gone when ``fit`` ends

    def phase_start(self, index: int) -> int:
        """Epochs finished before phase ``index`` begins."""
        return sum(p.epochs for p in self.plan[:index])

    def begin_phase(self) -> PhaseSpec:
        """Freeze/unfreeze for the current phase and give it its own optimizer, schedule and scaler."""
        phase, tr = self.plan[self.phase_index], self.tr
        set_trainable(tr.model, phase.trainable)
        self.opt = create_optimizer(tr.model, self.cfg.optim, name=phase.optim, lr=phase.lr,
                                    cuda=tr.device.type == "cuda")
        self.sched = Schedule(self.opt, self.cfg.sched, phase.epochs)
        self.scaler = torch.amp.GradScaler(tr.device.type) if tr.amp == torch.float16 else None
        if self._carried is not None:
            self.opt.load_state_dict(self._carried["optimizer"])  # also restores the last stepped LR
            self.sched.load_state_dict(self._carried["schedule"])
            if self.scaler is not None and self._carried.get("scaler"):
                self.scaler.load_state_dict(self._carried["scaler"])
            self._carried = None
        return phase

    def keep_best(self) -> None:
        """Early stopping's best weights replace the last ones (before the final checkpoint and the test)."""
        if self.stopper.best_state is not None:
            self.tr.model.load_state_dict(self.stopper.best_state)

    def state_dict(self, rng_ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint; ``rng_ranks``: every rank's RNG state (from ``_all_rng_states``), default this one's."""
        assert self.opt is not None and self.sched is not None
        rng_ranks = rng_ranks or [_rng_state(self.tr)]
        inside = self.epoch < self.phase_start(self.phase_index + 1)
        state = {"model": self.tr.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "schedule": self.sched.state_dict(), "rng": rng_ranks[0], "epoch": self.epoch,
                 "phase": self.phase_index if inside else self.phase_index + 1,
                 "early_stopping": self.stopper.state_dict(), "history": self.history,
                 "config": self.cfg.to_dict(), "data": data_info(self.ds)}
        if len(rng_ranks) > 1:
            state["rng_ranks"] = rng_ranks
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def save(self, folder: Path | None, final: bool) -> Path | None:
        """Write a checkpoint when one is due (every ``checkpoint_every`` epochs, at the end, and at the epochs
        in ``checkpoint_at``): every rank hands in its RNG state, rank 0 writes."""
        every = self.cfg.train.checkpoint_every
        due = final or (every and self.epoch % every == 0) or self.epoch in self.checkpoint_at
        if not due:
            return None
        rng_ranks = _all_rng_states(self.tr)
        if world()[0] != 0:
            return None
        written = _write(self.state_dict(rng_ranks), folder)
        if folder is None:
            self.temporary.append(written)
        return written

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint: the run then goes on as if it had never stopped."""
        self.tr.model.load_state_dict(ckpt["model"])
        _set_rng_state(self.tr, _own_rng_state(ckpt))
        self.stopper.load_state_dict(ckpt["early_stopping"])
        self.history, self.epoch = list(ckpt["history"]), int(ckpt["epoch"])
        index = 0
        while index < len(self.plan) and self.phase_start(index + 1) <= self.epoch:
            index += 1
        self.phase_index = index
        if self.epoch > self.phase_start(index):  # stopped inside a phase: its optimizer and schedule go on
            self._carried = {k: ckpt.get(k) for k in ("optimizer", "schedule", "scaler")}


@dataclass
class Outcome:
    """How the epoch loop ended: a status for the summary."""

    status: str = "completed"
    reason: str = ""
    stop: bool = False


# ------------------------------------------------------------------------------------ the loop
def run_epoch(state: TrialState, local: int) -> dict[str, Any]:
    """Train one epoch (``local`` counts within the phase) and validate; append and return its metrics."""
    tr, sched = state.tr, state.sched
    assert state.opt is not None and sched is not None
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"epoch": state.epoch + 1, "phase": state.phase_index, "lr": sched.lr}
    metrics.update(tr.train_epoch(state.opt, sched, local, state.scaler, data_epoch=state.epoch))
    metrics.update(tr.evaluate("val"))
    metrics["epoch_seconds"] = time.perf_counter() - t0
    state.history.append(metrics)
    state.epoch += 1
    return metrics


def run_phase(state: TrialState, reporter: Reporter, checkpoint_dir: Path | None, outcome: Outcome) -> None:
    """Train the current phase from ``state.epoch`` to its end, or until divergence or a stop."""
    phase = state.begin_phase()
    assert state.sched is not None
    for local in range(state.epoch - state.phase_start(state.phase_index), phase.epochs):
        metrics = run_epoch(state, local)
        if not math.isfinite(metrics["train_loss"]):
            outcome.status, outcome.reason = "diverged", f"non-finite training loss at epoch {state.epoch}"
            outcome.stop = True
            reporter.epoch(metrics, None, final=True)
            return
        state.sched.epoch_end(metrics)
        stop = state.stopper.update(metrics, state.tr.model) or reporter.should_stop()
        final = stop or state.epoch == state.cfg.total_epochs()
        if final:
            state.keep_best()  # the kept checkpoint holds the weights the test accuracy is measured on
        ckpt = state.save(checkpoint_dir, final)
        reporter.epoch(metrics, ckpt, final=final)
        if final:
            outcome.stop = True  # the reporter may still send its checkpoint with the summary
            return
        _cleanup(state)
    state.phase_index += 1


def check_runnable(cfg: TrialConfig, ds: Dataset) -> None:
    """Options that watch a validation metric need a validation split (else they would never fire)."""
    if ds.val is not None and len(ds.val) > 0:
        return
    es, sched = cfg.train.early_stopping, cfg.sched
    if es.patience and es.metric.startswith("val_"):
        raise UserError(f"train.early_stopping.metric = '{es.metric}' needs a validation split, but this dataset "
                        "has none; set data.val_fraction > 0 or use train_loss / train_accuracy.")
    if sched.plateau_on() and sched.plateau_metric.startswith("val_"):
        raise UserError(f"sched.plateau_metric = '{sched.plateau_metric}' needs a validation split, but this "
                        "dataset has none; set data.val_fraction > 0 or use train_loss.")


def fit(cfg: TrialConfig, reporter: Reporter | None = None, *, data: Dataset | None = None,
        checkpoint_dir: Path | None = None, resume: str | Path | None = None,
        checkpoint_at: Iterable[int] = ()) -> TrialResult:
    """Train ``cfg`` to the end (or divergence / early stop); return summary and per-epoch history.
    ``checkpoint_at``: epochs that get a checkpoint whatever ``checkpoint_every`` says (a trial may be paused
    there by a sweep's arm-level early stopping, and continues from it)."""
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    ds = data if data is not None else load_dataset(cfg.data)
    check_runnable(cfg, ds)
    state = TrialState(cfg, build_trainer(cfg, ds), ds)
    state.checkpoint_at = set(checkpoint_at)
    state.tr.on_step = getattr(reporter, "step", None)  # optional: progress inside an epoch (rayclf train)
    if resume is not None:
        state.restore(load_checkpoint(resume, map_location=state.tr.device))
    outcome = Outcome()
    try:
        while not outcome.stop and state.phase_index < len(state.plan):
            run_phase(state, reporter, checkpoint_dir, outcome)
        summary = summarize(cfg, state.tr, ds, state.history, outcome.status, outcome.reason, state.stopper,
                            started)
        reporter.end(summary)
    finally:  # also when a sweep stops or pauses the trial at a report (SystemExit) or the trial fails
        _cleanup(state)
    return TrialResult(summary, state.history)


def data_info(ds: Dataset) -> dict[str, Any]:
    """What ``predict`` needs to preprocess new images the way training did."""
    return {"mean": list(ds.mean), "std": list(ds.std), "classes": list(ds.classes), "shape": list(ds.shape)}


def _write(state: dict[str, Any], folder: Path | None) -> Path:
    target = folder if folder is not None else Path(tempfile.mkdtemp(prefix="rayclf-ckpt-"))
    save_checkpoint(state, target)
    return target


def _cleanup(state: TrialState) -> None:
    """Temporary checkpoint folders are gone once the reporter has taken its copy (a sweep's reporter copies
    each one to the trial's storage before it returns)."""
    import shutil

    for folder in state.temporary:
        shutil.rmtree(folder, ignore_errors=True)
    state.temporary.clear()


def summarize(cfg: TrialConfig, tr: Trainer, ds: Dataset, history: list[dict[str, Any]], status: str, reason: str,
              stopper: EarlyStopper, started: float) -> dict[str, Any]:
    """The end-of-trial record: final/best metrics, test accuracy, per-class accuracy, confusion matrix.

    The model is tested as it is: the loop has already put early stopping's best weights back."""
    t0 = time.perf_counter()
    test = tr.evaluate("test", confusion=True) if status != "diverged" else {}
    test_seconds = time.perf_counter() - t0
    vals = [(h["val_accuracy"], i) for i, h in enumerate(history) if math.isfinite(h.get("val_accuracy", math.nan))]
    best_val, best_i = max(vals, key=lambda v: v[0]) if vals else (float("nan"), None)  # a NaN epoch never counts
    last = history[-1] if history else {}
    return {
        "status": status,
        "reason": reason,
        "params": count_params(tr.model),
        "epochs": len(history),
        "test_accuracy": test.get("test_accuracy", float("nan")),
        "test_loss": test.get("test_loss", float("nan")),
        "best_val_accuracy": best_val,
        "best_epoch": (best_i + 1) if best_i is not None else None,
        "final_val_accuracy": last.get("val_accuracy", float("nan")),
        "final_train_loss": last.get("train_loss", float("nan")),
        "final_train_accuracy": last.get("train_accuracy", float("nan")),
        "images_per_sec": float(np.mean([h["images_per_sec"] for h in history])) if history else 0.0,
        "seconds": time.perf_counter() - started,  # the whole trial, final test evaluation included
        "train_seconds": float(sum(h["train_seconds"] for h in history)),
        "test_seconds": test_seconds,
        "early_stopped": bool(stopper.es.patience and stopper.bad >= stopper.es.patience),
        "per_class_accuracy": test.get("per_class_accuracy", []),
        "confusion_matrix": test.get("confusion_matrix", []),
        "misclassified": test.get("misclassified", []),
        "classes": list(ds.classes),
        "device": str(tr.device),
        "world_size": world()[1],
        "fingerprint": trial_id(cfg, world()[1]),
    }
