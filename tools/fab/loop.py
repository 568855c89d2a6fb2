"""The training loop both models share: epochs of batches, a progress bar with an ETA, early stopping on the
validation split, and a checkpoint after every epoch that ``--resume`` continues from.

A checkpoint holds the weights, the optimiser and scheduler states, the random generators, the best validation
score so far with its weights, and how many epochs have passed without improving on it; it is written to a
temporary file and renamed, so an interrupted run leaves the previous epoch's checkpoint whole. It is keyed by the
data's digest and the budget: a checkpoint of another data set or budget is not resumed from.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

Batches = Callable[[np.random.Generator], list[npt.NDArray[np.int64]]]  # one epoch's batches of indices
Step = Callable[[npt.NDArray[np.int64], torch.Generator, int], torch.Tensor]  # a batch, the step number -> its loss
Validate = Callable[[], float]  # the validation score: higher is better


@dataclass(frozen=True)
class Schedule:
    max_epochs: int
    patience: int  # epochs without a better validation score before stopping
    lr: float
    key: str  # the data digest and budget: a checkpoint of another key is not resumed
    epoch_dies: int | None = None  # dies drawn per epoch (None: as many as the training set holds)


def log(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
    )  # fmt: skip


def _load(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, weights_only=False)
    if state.get("key") != key:
        log(f"{path.name}: a checkpoint of another data set or budget, not resumed")
        return None
    return state


def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def fit(
    name: str,
    model: torch.nn.Module,
    groups: list[dict[str, Any]],
    batches: Batches,
    step: Step,
    validate: Validate,
    schedule: Schedule,
    checkpoint: Path,
    seed: int,
    resume: bool = False,
) -> tuple[float, int]:
    """Train ``model`` (AdamW over ``groups``, one-cycle learning rate over ``max_epochs``) until the validation
    score has not improved for ``patience`` epochs; leaves the best epoch's weights in ``model``. Returns the best
    score and its epoch (1-based)."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    steps_per_epoch = len(batches(np.random.default_rng(seed)))
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=schedule.max_epochs * steps_per_epoch, pct_start=0.15
    )
    epoch, best, best_epoch, best_state, waited = 0, -float("inf"), 0, copy.deepcopy(model.state_dict()), 0
    state = _load(checkpoint, schedule.key) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        gen.set_state(state["gen"])
        epoch, best, best_epoch, best_state, waited = (state[k] for k in ("epoch", "best", "best_epoch", "best_state",
                                                                          "waited"))  # fmt: skip
        log(f"{name}: resumed after epoch {epoch} (best {best:.4f} at epoch {best_epoch})")
    with _progress() as bar:
        task = bar.add_task(name, total=schedule.max_epochs * steps_per_epoch, completed=epoch * steps_per_epoch)
        while epoch < schedule.max_epochs and waited < schedule.patience:
            model.train()
            total = 0.0
            order = batches(rng)
            for k, idx in enumerate(order):
                loss = step(idx, gen, epoch * steps_per_epoch + k)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                total += float(loss.item())
                bar.advance(task)
            epoch += 1
            model.eval()
            score = validate()
            if score > best:
                best, best_epoch, best_state, waited = score, epoch, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
            log(f"{name} epoch {epoch}/{schedule.max_epochs} loss={total / max(len(order), 1):.4f} "
                f"val={score:.4f} best={best:.4f}@{best_epoch}")  # fmt: skip
            _save(checkpoint, {
                "key": schedule.key, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": rng.bit_generator.state, "gen": gen.get_state(),
                "epoch": epoch, "best": best, "best_epoch": best_epoch, "best_state": best_state, "waited": waited,
            })  # fmt: skip
        if waited >= schedule.patience:
            log(f"{name}: stopped early after epoch {epoch}, no better validation score for {waited} epochs")
    model.load_state_dict(best_state)
    model.eval()
    return best, best_epoch
