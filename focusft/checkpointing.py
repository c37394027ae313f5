"""Crash-safe HF checkpoints through torchtune's checkpointer, and finding the one to resume.

torchtune's ``FullModelHFCheckpointer`` writes straight into ``output_dir/epoch_N``
and overwrites one shared ``recipe_state.pt``, so a crash while saving can leave a
half-written checkpoint where a good one was. Here it writes into a staging folder
that is renamed into place only when complete; the ``LATEST`` file, replaced
atomically afterwards, names the checkpoint to resume from. Recipe state (optimizer,
scheduler, data position, RNG) lives in that checkpoint's ``recipe_state.pt`` and is
removed from the previous one only after the new one is in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torchtune import config, training
from torchtune.utils import get_logger

from focusft.config import ConfigError, checkpoint_files
from focusft.hf_files import MissingTokenizerError, make_readable, set_chat_eos, special_token_ids

LATEST = "LATEST"
WEIGHT_INDEX = "model.safetensors.index.json"  # written by FullModelHFCheckpointer next to the shards
RECIPE_STATE = "recipe_state.pt"
STAGING = ".staging"
torchtune_logger = get_logger()  # the one logger all of torchtune (and the recipe) logs to


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint ``LATEST`` names, if it is complete (has its recipe state)."""
    marker = output_dir / LATEST
    if not marker.is_file():
        return None
    path = output_dir / marker.read_text().strip()
    return path if (path / RECIPE_STATE).is_file() else None


def saved_checkpoints(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.glob("epoch_*")) + sorted(p.name for p in output_dir.glob("step_*"))


class CheckpointManager:
    """Loads the base or resumed weights and saves checkpoints atomically (I/O on rank 0)."""

    def __init__(self, cfg_checkpointer: DictConfig, output_dir: str | Path, resume: bool):
        self.output_dir = Path(output_dir)
        self.resume_dir = latest_checkpoint(self.output_dir) if resume else None
        if resume and self.resume_dir is None:
            raise ConfigError(
                f"resume_from_checkpoint=True but {self.output_dir} has no complete checkpoint to resume from "
                f"(no {LATEST} file naming a checkpoint with {RECIPE_STATE})."
            )
        if not resume and saved_checkpoints(self.output_dir):
            raise ConfigError(
                f"output_dir {self.output_dir} already holds checkpoints {saved_checkpoints(self.output_dir)}; "
                "set resume_from_checkpoint=True to continue that run, or choose another output_dir."
            )
        overrides: dict[str, Any] = {"output_dir": str(self.output_dir / STAGING)}
        if self.resume_dir is not None:
            index = json.loads((self.resume_dir / WEIGHT_INDEX).read_text())
            overrides |= {
                "checkpoint_dir": str(self.resume_dir),
                "checkpoint_files": sorted(set(index["weight_map"].values())),
            }
        else:
            checkpoint_files(cfg_checkpointer)  # validates the file list
        try:
            special_token_ids(Path(overrides.get("checkpoint_dir", cfg_checkpointer.checkpoint_dir)))
        except MissingTokenizerError as err:
            raise ConfigError(str(err)) from None
        self.checkpointer = config.instantiate(cfg_checkpointer, **overrides)

    def load_model_state(self) -> dict[str, torch.Tensor]:
        """torchtune-format model weights of the base model, or of the checkpoint resumed from."""
        return self.checkpointer.load_checkpoint()[training.MODEL_KEY]

    def load_recipe_state(self) -> dict[str, Any] | None:
        if self.resume_dir is None:
            return None
        return torch.load(self.resume_dir / RECIPE_STATE, weights_only=False)

    def save(self, name: str, model_state: dict[str, torch.Tensor], recipe_state: dict[str, Any]) -> Path:
        """Write checkpoint ``output_dir/name`` (HF weights, config, tokenizer files, recipe state)."""
        staging = self.output_dir / STAGING
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of a crash during an earlier save
        with _quiet(torchtune_logger):  # its lines name the staging folder; the recipe logs the final path
            self.checkpointer.save_checkpoint({training.MODEL_KEY: model_state}, epoch=0)
        staged = staging / "epoch_0"
        set_chat_eos(staged)
        torch.save(recipe_state, staged / RECIPE_STATE)
        make_readable(staged)

        final = self.output_dir / name
        if final.exists():  # a resumed run saving the same step again: keep the old one until replaced
            retired = self.output_dir / f"{STAGING}-{name}-old"
            shutil.rmtree(retired, ignore_errors=True)
            final.rename(retired)
            staged.rename(final)
            shutil.rmtree(retired)
        else:
            staged.rename(final)
        previous = latest_checkpoint(self.output_dir)
        marker = self.output_dir / f"{LATEST}.tmp"
        marker.write_text(name)
        os.replace(marker, self.output_dir / LATEST)
        if previous is not None and previous.name != name:
            (previous / RECIPE_STATE).unlink()
        shutil.rmtree(staging, ignore_errors=True)
        return final


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Drop ``logger``'s records below WARNING for the duration (a filter: the recipe shares the logger)."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
