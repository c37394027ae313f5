"""Crash-safe HF checkpoints through torchtune's checkpointer, and finding the one to resume.

torchtune's ``FullModelHFCheckpointer`` writes straight into ``output_dir/epoch_N``
and overwrites one shared ``recipe_state.pt``, so a crash while saving can leave a
half-written checkpoint where a good one was. Here it writes into a staging folder
that is renamed into place only when complete; the ``LATEST`` file, replaced
atomically afterwards, names the checkpoint to resume from. Recipe state (optimizer,
scheduler, data position, RNG) lives in each checkpoint's ``recipe_state.pt``; the
newest ``keep_recipe_states`` checkpoints keep theirs, so that a resume can fall back
to the previous one when LATEST's files cannot be read. Weights that are not all
finite are never written.

A LoRA run (``adapter=True``) saves the adapter in PEFT format (``adapter_model.safetensors``,
``adapter_config.json``, and torchtune's ``adapter_model.pt`` to resume from), plus the merged
model in ``merged/`` when given it (the end of training); it resumes with the base weights of ``checkpoint_dir`` and the
adapter of the checkpoint.
"""

from __future__ import annotations

import errno
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
from safetensors import safe_open
from safetensors.torch import save_file
from torchtune import config, training, utils

from focusft.config import ConfigError, checkpoint_files
from focusft.hf_files import MissingTokenizerError, make_readable, set_chat_eos, special_token_ids
from focusft.lora import peft_adapter_weights

log = utils.get_logger("INFO")

LATEST = "LATEST"
WEIGHT_INDEX = "model.safetensors.index.json"  # written by FullModelHFCheckpointer next to the shards
ADAPTER_WEIGHTS = "adapter_model.pt"  # torchtune-named adapter tensors (PEFT's are adapter_model.safetensors)
ADAPTER_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MERGED = "merged"  # subfolder of a LoRA run's last checkpoint: the merged model, a plain HF checkpoint
RECIPE_STATE = "recipe_state.pt"
PROGRESS = "progress.json"  # {"global_step": N}: orders checkpoints without loading their recipe state
STAGING = ".staging"  # also the prefix of the folder a replaced checkpoint is moved to


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the path."""


def latest_name(output_dir: Path) -> str | None:
    """The checkpoint name ``LATEST`` holds; None if it is missing or unreadable (e.g. not UTF-8 text)."""
    try:
        name = (output_dir / LATEST).read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if name and "/" not in name and "\0" not in name and name not in (".", "..") else None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint ``LATEST`` names, if it is complete (has its recipe state)."""
    name = latest_name(output_dir)
    if name is None:
        return None
    path = output_dir / name
    return path if (path / RECIPE_STATE).is_file() else None


def saved_checkpoints(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.glob("epoch_*")) + sorted(p.name for p in output_dir.glob("step_*"))


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint was saved at (-1 if unknown, e.g. written before ``progress.json``)."""
    try:
        return int(json.loads((path / PROGRESS).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def resumable_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints that still hold a recipe state, the one LATEST names first, then newest first."""
    paths = sorted(
        (output_dir / name for name in saved_checkpoints(output_dir) if (output_dir / name / RECIPE_STATE).is_file()),
        key=checkpoint_step,
        reverse=True,
    )
    latest = latest_checkpoint(output_dir)
    return [latest, *(p for p in paths if p != latest)] if latest is not None else paths


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding a NaN or an infinity, if any."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _no_space_left(error: BaseException | None) -> bool:
    """Whether ENOSPC caused ``error`` (torch.save and safetensors wrap it in their own errors)."""
    while error is not None:
        if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError (permission denied, read-only file system, ...) behind ``error``, if one is."""
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _weight_files(checkpoint: Path) -> list[str]:
    index = checkpoint / WEIGHT_INDEX
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return ["model.safetensors"]


def _read_recipe_state(checkpoint: Path, adapter: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The recipe state and weight file names of ``checkpoint``; raises if a file cannot be read.

    Weight files are checked by opening them (safetensors validates the header and that the
    file covers every tensor it lists), not by reading all weights a second time; an
    adapter checkpoint's resume weights are small and are read whole.
    """
    if adapter:
        torch.load(checkpoint / ADAPTER_WEIGHTS, weights_only=True, map_location="cpu")
        files = [ADAPTER_WEIGHTS]
    else:
        files = _weight_files(checkpoint)
        for name in files:
            with safe_open(checkpoint / name, framework="pt"):
                pass
    return torch.load(checkpoint / RECIPE_STATE, weights_only=False, map_location="cpu"), files


class CheckpointManager:
    """Loads the base or resumed weights and saves checkpoints atomically (I/O on rank 0).

    ``keep_recipe_states``: how many of the newest checkpoints keep their recipe state.
    ``adapter``: a LoRA run (see the module docstring).
    """

    def __init__(
        self,
        cfg_checkpointer: DictConfig,
        output_dir: str | Path,
        resume: bool,
        keep_recipe_states: int = 2,
        adapter: bool = False,
    ):
        self.output_dir = Path(output_dir)
        self.keep_recipe_states = keep_recipe_states
        self.adapter = adapter
        self.base_dir = Path(str(cfg_checkpointer.checkpoint_dir)).expanduser().resolve()
        self.resume_dir: Path | None = None
        self._protected: Path | None = None  # the resumed-from checkpoint keeps its state until this run saves
        self.recipe_state: dict[str, Any] | None = None
        if not resume and saved_checkpoints(self.output_dir):
            raise ConfigError(
                f"output_dir {self.output_dir} already holds checkpoints {saved_checkpoints(self.output_dir)}; "
                "set resume_from_checkpoint=True to continue that run, or choose another output_dir."
            )
        overrides: dict[str, Any] = {"output_dir": str(self.output_dir / STAGING)}
        if resume:
            self.resume_dir, self.recipe_state, files = self._open_resumable()
            self._protected = self.resume_dir
        if resume and not adapter:
            overrides |= {"checkpoint_dir": str(self.resume_dir), "checkpoint_files": files}
        else:
            checkpoint_files(cfg_checkpointer)  # validates the file list
        try:
            special_token_ids(Path(overrides.get("checkpoint_dir", cfg_checkpointer.checkpoint_dir)))
        except MissingTokenizerError as err:
            raise ConfigError(str(err)) from None
        try:
            self.checkpointer = config.instantiate(cfg_checkpointer, **overrides)
        except Exception as error:  # noqa: BLE001 - a builder error is a config error (files, arguments)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            component = cfg_checkpointer.get("_component_")
            raise ConfigError(f"checkpointer ({component}) cannot be built: {reason}") from None

    def _open_resumable(self) -> tuple[Path, dict[str, Any], list[str]]:
        """The newest checkpoint whose files can be read, warning about each one skipped."""
        candidates = resumable_checkpoints(self.output_dir)
        if not candidates:
            raise ConfigError(
                f"resume_from_checkpoint=True but {self.output_dir} has no complete checkpoint to resume from "
                f"(no checkpoint with {RECIPE_STATE})."
            )
        problems = []
        for path in candidates:
            try:
                state, files = _read_recipe_state(path, self.adapter)
            except Exception as error:  # noqa: BLE001 - any unreadable file means: try the previous checkpoint
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                problems.append(f"{path.name}: {reason}")
                message = f"Cannot resume from {path}: {reason}. Trying the previous one."
                utils.log_rank_zero(log, message, logging.WARNING)
                continue
            if problems:
                utils.log_rank_zero(log, f"Resuming from {path}: newer checkpoints cannot be read.", logging.WARNING)
            return path, state, files
        raise ConfigError(f"No checkpoint in {self.output_dir} can be resumed from: {'; '.join(problems)}.")

    def load_model_state(self) -> dict[str, torch.Tensor]:
        """torchtune-format model weights of the base model, or of the checkpoint resumed from."""
        return self.checkpointer.load_checkpoint()[training.MODEL_KEY]

    def load_recipe_state(self) -> dict[str, Any] | None:
        return self.recipe_state

    def load_adapter_state(self) -> dict[str, torch.Tensor] | None:
        """torchtune-named adapter weights of the checkpoint resumed from (None when not resuming)."""
        if self.resume_dir is None:
            return None
        return torch.load(self.resume_dir / ADAPTER_WEIGHTS, weights_only=True, map_location="cpu")

    def save(
        self,
        name: str,
        model_state: dict[str, torch.Tensor] | None,
        recipe_state: dict[str, Any],
        step: int = -1,
        adapter: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    ) -> Path:
        """Write checkpoint ``output_dir/name`` (HF weights, config, tokenizer files, recipe state).

        ``adapter``: the LoRA weights (torchtune names) and adapter config, written in PEFT
        format as well; ``model_state`` is then the merged model, written as a plain HF
        checkpoint into the subfolder ``merged/`` (transformers would take a folder holding
        ``adapter_config.json`` for an adapter), or None.
        Raises :class:`CheckpointError` (nothing written, LATEST unchanged) if a weight is not
        finite, the disk is full, or any other OSError (e.g. permission denied) stops the write.
        """
        final = self.output_dir / name
        bad = first_non_finite({**(model_state or {}), **(adapter[0] if adapter else {})})
        if bad is not None:
            raise CheckpointError(
                f"refusing to write checkpoint {final}: weight {bad} holds NaN or inf values. "
                f"{self._latest_description()}"
            )
        try:
            return self._write(name, final, model_state, recipe_state, step, adapter)
        except Exception as error:
            shutil.rmtree(self.output_dir / STAGING, ignore_errors=True)
            if _no_space_left(error):
                problem = f"no space left on {self.output_dir} while writing checkpoint {name}"
            elif (cause := _os_error(error)) is not None:
                where = f" ({cause.filename})" if cause.filename else ""
                problem = f"cannot write checkpoint {name} in {self.output_dir}: {cause.strerror or cause}{where}"
            else:
                raise
            raise CheckpointError(
                f"{problem}. Make room or fix the folder's permissions, then resume. {self._latest_description()}"
            ) from None

    def _write(
        self,
        name: str,
        final: Path,
        model_state: dict[str, torch.Tensor] | None,
        recipe_state: dict[str, Any],
        step: int,
        adapter: tuple[dict[str, torch.Tensor], dict[str, Any]] | None,
    ) -> Path:
        """Stage, then move into place and point LATEST at it (each step leaves earlier checkpoints intact)."""
        staging = self.output_dir / STAGING
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of a crash during an earlier save
        with _quiet(log):  # torchtune's lines name the staging folder; the recipe logs the final path
            self._write_weights(model_state, adapter)
        staged = staging / "epoch_0"
        if adapter is not None:
            _name_base_model(staged / ADAPTER_CONFIG, self.base_dir)
            if model_state is not None:
                (staging / "epoch_1").rename(staged / MERGED)
                set_chat_eos(staged / MERGED)
        set_chat_eos(staged)
        torch.save(recipe_state, staged / RECIPE_STATE)
        (staged / PROGRESS).write_text(json.dumps({"global_step": step}))
        make_readable(staged)

        if final.exists():  # a resumed run saving the same step again: keep the old one until replaced
            retired = self.output_dir / f"{STAGING}-{name}-old"
            shutil.rmtree(retired, ignore_errors=True)
            final.rename(retired)
            try:
                staged.rename(final)
            except OSError:
                retired.rename(final)  # the old one back in place
                raise
            shutil.rmtree(retired)
        else:
            staged.rename(final)
        marker = self.output_dir / f"{LATEST}.tmp"
        marker.write_text(name)
        os.replace(marker, self.output_dir / LATEST)
        self._protected = None
        self.remove_stale()
        return final

    def _write_weights(
        self,
        model_state: dict[str, torch.Tensor] | None,
        adapter: tuple[dict[str, torch.Tensor], dict[str, Any]] | None,
    ) -> None:
        """torchtune's checkpointer writes staging/epoch_0 (the checkpoint) and, for a merged model, epoch_1."""
        if adapter is None:
            self.checkpointer.save_checkpoint({training.MODEL_KEY: model_state}, epoch=0)
            return
        weights, adapter_config = adapter
        state = {training.ADAPTER_KEY: dict(weights), training.ADAPTER_CONFIG: dict(adapter_config)}
        self.checkpointer.save_checkpoint(state, epoch=0, adapter_only=True)
        # PEFT's file again, with Qwen2's names and no q/k permutation (focusft.lora.peft_adapter_weights).
        peft_file = self.output_dir / STAGING / "epoch_0" / PEFT_WEIGHTS
        save_file(peft_adapter_weights(weights), str(peft_file), metadata={"format": "pt"})
        if model_state is not None:
            self.checkpointer.save_checkpoint({training.MODEL_KEY: model_state}, epoch=1)

    def remove_stale(self) -> None:
        """Delete leftover staging folders and the recipe states beyond the newest ``keep_recipe_states``.

        The checkpoint LATEST names keeps its state, and so does the one this run resumed
        from until the run has saved one of its own.
        """
        for leftover in self.output_dir.glob(f"{STAGING}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        keep = {latest_checkpoint(self.output_dir), self._protected}
        for path in resumable_checkpoints(self.output_dir)[self.keep_recipe_states :]:
            if path not in keep:
                (path / RECIPE_STATE).unlink(missing_ok=True)

    def _latest_description(self) -> str:
        latest = latest_checkpoint(self.output_dir)
        return f"The last good checkpoint is {latest}." if latest else "No checkpoint has been written yet."


def _name_base_model(adapter_config: Path, base_dir: Path) -> None:
    """Record the base checkpoint in PEFT's ``base_model_name_or_path`` when no hub id was known.

    torchtune fills it from the base directory's ``original_repo_id.json`` only; the local
    path lets ``focusft-eval`` (and PEFT's ``AutoPeftModel``) find the base of an adapter.
    """
    config = json.loads(adapter_config.read_text())
    if not config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = str(base_dir)
        adapter_config.write_text(json.dumps(config, indent=2))


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
