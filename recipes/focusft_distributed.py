"""FocuSFT training recipe: torchtune + FSDP2, one config section for the paper's four variants.

    tune run --nproc_per_node 8 recipes/focusft_distributed.py --config configs/qwen2_5/7B_focusft.yaml
    tune run --nproc_per_node 2 recipes/focusft_distributed.py --config configs/tiny/focusft_cpu.yaml

Per micro-batch: build one attention mask (``focusft.attention``), run the trunk
(layers without fast weights) once, K inner steps on fresh fast weights of each
document (sample) of the micro-batch, then the outer response loss
(:func:`focusft.bilevel.bilevel_step`), and backpropagate it into θ. The outer loss is
normalised over the whole global batch, per response token or per document
(``focusft.loss_normalization``, :mod:`focusft.normalization`). Every sample is trained
once per epoch; the last optimizer step may accumulate fewer micro-batches
(:mod:`focusft.data.epoch`).

An optimizer step whose outer loss or θ-gradient is not finite on any rank is skipped on
every rank; ``max_consecutive_skipped_steps`` in a row stop the run. Bad input of any kind
stops the run before compute with one line ``FocuSFT <kind> error: …`` and exit code 3.

A torchtune LoRA model builder (``lora_qwen2_5_*``, ``quantize_base: True`` for QLoRA) makes
the outer loop train only the adapters (:mod:`focusft.outer_weights`); checkpoints then hold
the PEFT adapter, and the merged model at the end.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import sys
import time
import warnings
from collections.abc import Callable, Collection
from functools import partial
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed import (
    all_gather_object,
    all_reduce,
    broadcast_object_list,
    destroy_process_group,
    init_process_group,
)
from torch.distributed.tensor import DTensor
from torchdata.stateful_dataloader import StatefulDataLoader
from torchtune import config, training, utils
from torchtune.recipe_interfaces import FTRecipeInterface
from torchtune.training.lr_schedulers import get_lr
from tqdm import tqdm

from focusft.activation_memory import ActivationOffload, inner_checkpoint_mode
from focusft.analysis.probe import AttentionProbe, AttentionProbeConfig
from focusft.base_checks import build_tokenizer, check_base_checkpoint, check_tokenizer_files
from focusft.batch import prepare_batch
from focusft.bilevel import bilevel_step
from focusft.checkpointing import CheckpointError, CheckpointManager, latest_name
from focusft.components import check_components
from focusft.config import (
    ConfigError,
    FocusConfig,
    accept_additions,
    check_device,
    check_input_files,
    check_known_keys,
    check_output_dir,
    check_training_values,
    config_differences,
    import_object,
)
from focusft.data import LengthGroupedSampler, collate_focus_batch
from focusft.data.epoch import EpochSteps, EverySampleSampler, ZeroWeightPadding
from focusft.data.sources import DataError
from focusft.documents import fast_weight_seed
from focusft.fast_weights import attach_fast_weight_slots
from focusft.flex import compile_flex_attention_for_all_lengths
from focusft.masks import build_mask
from focusft.metric_guard import GuardedMetricLogger, MetricsError
from focusft.normalization import DESCRIPTIONS, outer_loss
from focusft.outer_weights import outer_weights, trainable_parameters
from focusft.preemption import Stopped, install_stop_signals, report_stop
from focusft.run_guard import REPORTED_ERROR_EXIT_CODE, exit_when_launcher_dies, lock_output_dir
from focusft.sequence_parallel import ParallelDims, apply_sequence_parallel, whole_sequences
from focusft.split_decoder import IGNORE_INDEX, SplitDecoder, shard_split_decoder
from focusft.tiled_ffn import apply_tiled_ffn

log = utils.get_logger("INFO")
T = TypeVar("T")

# Index of each per-step statistic in the tensor all-reduced once per optimizer step.
# LOSS_SUM / WEIGHT is the step's outer loss (focusft.normalization).
(LOSS_SUM, WEIGHT, TOKENS, INPUT_TOKENS, SKIPPED, DELTA_SUM, FAST_WEIGHT_SETS, DOCUMENTS, NON_FINITE_GRADS) = range(9)
INNER_LOSSES = 9
# Settings whose change between a checkpoint and its resume is reported.
RESUME_COMPARED_KEYS = (
    "dataset",
    "optimizer",
    "lr_scheduler",
    "warmup_ratio",
    "clip_grad_norm",
    "batch_size",
    "gradient_accumulation_steps",
    "shuffle",
    "length_grouped",
    "collate_fn",
    "epochs",
    "max_steps_per_epoch",
)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row); the message says why."""


class FocuSFTRecipeDistributed(FTRecipeInterface):
    """Full fine-tuning of a torchtune decoder with the FocuSFT bilevel step, sharded with FSDP2."""

    def __init__(self, cfg: DictConfig, added: Collection[str] = ()) -> None:
        # Everything that can be checked without weights or data is checked first.
        self.focus = FocusConfig.from_section(cfg.get("focusft"))
        self.weights = outer_weights(cfg)
        self.probe_config = AttentionProbeConfig.from_section(cfg.get("attention_probe"))
        check_training_values(cfg)
        check_device(cfg)
        check_components(cfg, added)  # `added`: keys given as `+key=value`
        check_input_files(cfg, base_checkpoint=not cfg.get("resume_from_checkpoint", False))
        check_tokenizer_files(cfg.tokenizer)
        self.output_dir = check_output_dir(cfg.output_dir)

        self.device = utils.get_device(device=cfg.device)
        self.dtype = training.get_dtype(cfg.dtype, device=self.device)
        self.mask_kind = self.focus.mask_kind(self.device)
        init_process_group(training.get_distributed_backend(self.device.type))
        self.world_size, self.rank = utils.get_world_size_and_rank()
        self.is_rank_zero = self.rank == 0
        sp = cfg.get("sequence_parallel_size", 1)
        self.parallel = ParallelDims.build(sp, self.world_size, self.rank, self.device.type)
        self._lock = self._on_rank_zero(lambda: lock_output_dir(self.output_dir))

        self.seed = training.set_seed(seed=cfg.seed)
        self.total_epochs = cfg.epochs
        self.max_steps_per_epoch = cfg.get("max_steps_per_epoch")
        self.grad_accum = cfg.gradient_accumulation_steps
        self.clip_grad_norm = cfg.get("clip_grad_norm")
        self.save_every_n_steps = cfg.get("save_every_n_steps")
        self.stop_after_step = cfg.get("stop_after_step")
        self.log_every_n_steps = cfg.get("log_every_n_steps", 1)
        self.max_consecutive_skips = cfg.get("max_consecutive_skipped_steps", 10)
        self.inner = self.focus.inner_loop
        self.config_snapshot = OmegaConf.to_container(cfg, resolve=True)

        self.epochs_run = 0
        self.global_step = 0
        self.steps_in_epoch = 0  # optimizer steps already taken in the current epoch (on resume)
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient, in all
        self.consecutive_skips = 0
        self.stops = install_stop_signals()
        self.last_saved: str | None = None  # name of the newest checkpoint this run wrote

    def _on_rank_zero(self, action: Callable[[], T]) -> T | None:
        """Run ``action`` on rank 0 only; a ConfigError or CheckpointError it raises is raised on every rank."""
        result, message = None, [None]
        if self.is_rank_zero:
            try:
                result = action()
            except (ConfigError, CheckpointError) as error:
                message = [(type(error), str(error))]
        broadcast_object_list(message, src=0)
        if message[0] is not None:
            kind, text = message[0]
            raise kind(text)
        return result

    def setup(self, cfg: DictConfig) -> None:
        if self.is_rank_zero:
            log.info(f"FocuSFT recipe, resolved config:\n\n{OmegaConf.to_yaml(cfg, resolve=True)}")
            log.info(
                f"Checkpoints go to {self.output_dir}/epoch_N (and step_N; LATEST names the newest); metrics "
                f"through {cfg.metric_logger._component_.rsplit('.', 1)[-1]} to {_metrics_destination(cfg)}."
            )
        self.checkpoints = CheckpointManager(
            cfg.checkpointer,
            self.output_dir,
            cfg.get("resume_from_checkpoint", False),
            keep_recipe_states=cfg.get("keep_recipe_states", 2),
            adapter=self.weights.adapter,
        )
        recipe_state = self.checkpoints.load_recipe_state()
        if recipe_state is not None and recipe_state["epoch"] >= self.total_epochs:
            raise ConfigError(
                f"The run in {self.output_dir} is finished: {self.checkpoints.resume_dir.name} ends epoch "
                f"{recipe_state['epoch']} of {self.total_epochs} (step {recipe_state['global_step']}). "
                "Nothing to resume; raise `epochs` to train longer, or choose another output_dir."
            )
        # Leftovers of a crash or a full disk go before anything else is written.
        self._on_rank_zero(self.checkpoints.remove_stale)
        # As torchtune does, the logger comes before data and model: a missing package fails fast.
        self.metric_logger = self._on_rank_zero(lambda: self._setup_metric_logger(cfg))

        if self.checkpoints.resume_dir is None:  # a checkpoint of this run was checked when it was written
            self._on_rank_zero(lambda: check_base_checkpoint(cfg))
        self.tokenizer = build_tokenizer(cfg.tokenizer)
        self.dataloader = self._setup_data(cfg)
        # Every sample once per epoch; the last step may accumulate fewer micro-batches.
        self.epoch_steps = EpochSteps(len(self.dataloader), self.grad_accum)
        self.steps_per_epoch = self.epoch_steps.steps
        if self.steps_per_epoch == 0:
            raise ConfigError("The dataset has no samples.")
        if self.is_rank_zero and (layout := self._epoch_layout()):
            log.info(layout)
        if self.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, self.max_steps_per_epoch)
        self.total_steps = self.total_epochs * self.steps_per_epoch
        self.probe = None
        if self.probe_config.every_n_steps is not None:
            self.probe = AttentionProbe(
                self.probe_config,
                self.dataloader.dataset,
                self.tokenizer,
                self.focus.attention,
                self.mask_kind,
                self.device,
            )

        self.model, self.slots = self._setup_model(cfg)
        try:
            self.optimizer = config.instantiate(cfg.optimizer, trainable_parameters(self.model))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"optimizer ({cfg.optimizer.get('_component_')}): {error}") from None
        self.lr_scheduler = self._setup_lr_scheduler(cfg)
        if recipe_state is not None:
            self._restore(recipe_state)

        if self.is_rank_zero:
            fast = (
                f"fast weights on layers {self.slots.first_layer}..{self.slots.num_layers - 1} "
                f"(one set per {self.focus.fast_weight_scope})"
                if self.inner is not None
                else "no fast weights (bilevel=false)"
            )
            log.info(
                f"{self.focus.variant}, {self.weights.describe()}: {self.total_steps} steps "
                f"({self.steps_per_epoch}/epoch), {self.world_size} process(es) (sequence parallel: "
                f"{self.parallel.sp}), {self.mask_kind} mask, {fast}"
            )
            normalization = self.focus.loss_normalization
            log.info(f"Outer loss per step: {DESCRIPTIONS[normalization]} (loss_normalization: {normalization}).")
        if self.probe is not None and self.global_step == 0:
            self._probe_attention()  # the starting point

    def _setup_metric_logger(self, cfg: DictConfig) -> GuardedMetricLogger:
        try:
            metric_logger = config.instantiate(cfg.metric_logger)
            metric_logger.log_config(cfg)
        except (ImportError, TypeError, ValueError, OSError) as error:
            raise ConfigError(f"metric_logger {cfg.metric_logger.get('_component_')} cannot be used: {error}") from None
        return GuardedMetricLogger(metric_logger, _metrics_destination(cfg), self.output_dir)

    def _setup_data(self, cfg: DictConfig) -> StatefulDataLoader:
        dataset = config.instantiate(cfg.dataset, self.tokenizer)
        collate = import_object(cfg.get("collate_fn", "focusft.data.collate_focus_batch"), "collate_fn")
        if collate is collate_focus_batch and len(dataset) and "context" not in dataset[0]:
            raise ConfigError(
                f"dataset items of {cfg.dataset.get('_component_')} have no `context` field (keys: "
                f"{sorted(dataset[0])}), which collate_focus_batch needs to tell context from response tokens. "
                "torchtune's own datasets do not provide it: convert the data to OpenAI `messages` or ShareGPT "
                "`conversations` JSON Lines and use focusft.data.chat_dataset (source: json, data_files: …)."
            )
        if self.inner is not None and len(dataset) and "sample_index" not in dataset[0]:
            raise ConfigError(
                "Bilevel training seeds each sample's fast weights from its dataset index, but the dataset's "
                "items have no `sample_index` (a list with the item's own index, or its packed samples' indices). "
                "The focusft.data builders add it."
            )
        shuffle = cfg.get("shuffle", True)
        dataset = ZeroWeightPadding(dataset, IGNORE_INDEX)  # the samplers' padding trains nothing
        if cfg.get("length_grouped", False):
            if not hasattr(dataset, "lengths"):
                raise ConfigError(
                    "length_grouped=True needs a dataset with `lengths` (the focusft.data builders have it)."
                )
            sampler = LengthGroupedSampler(
                dataset.lengths,
                cfg.batch_size,
                self.parallel.data_size,
                self.parallel.data_rank,
                shuffle=shuffle,
                seed=cfg.seed,
            )
        else:
            sampler = EverySampleSampler(
                dataset, self.parallel.data_size, self.parallel.data_rank, shuffle=shuffle, seed=cfg.seed
            )
        return StatefulDataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            collate_fn=partial(collate, padding_idx=self.tokenizer.pad_id, ignore_idx=IGNORE_INDEX),
            drop_last=False,
        )

    def _epoch_layout(self) -> str:
        """The log line for an epoch that does not divide evenly into full steps (else empty)."""
        samples = len(self.dataloader.dataset)
        return self.epoch_steps.describe(samples, len(self.dataloader.sampler) * self.world_size - samples)

    def _setup_model(self, cfg: DictConfig):
        """Build on the meta device, add fast-weight slots, shard, then load the weights."""
        with training.set_default_dtype(self.dtype), torch.device("meta"):
            decoder = config.instantiate(cfg.model)
        self.weights.prepare(decoder)
        slots = attach_fast_weight_slots(decoder, self.focus.fast_weights)
        apply_sequence_parallel(decoder, self.parallel.sequence)
        model = SplitDecoder(
            decoder,
            slots,
            activation_checkpointing=cfg.get("enable_activation_checkpointing", False),
            inner_checkpointing=inner_checkpoint_mode(
                cfg.get("enable_activation_checkpointing", False),
                cfg.get("enable_inner_activation_checkpointing", False),
            ),
            offload=ActivationOffload(self.device) if cfg.get("enable_activation_offloading", False) else None,
        )
        apply_tiled_ffn(decoder, cfg.get("ffn_tile_tokens"))
        if self.mask_kind == "block":
            compile_flex_attention_for_all_lengths()
        if cfg.get("compile", False):
            # Per layer, like torchtune's compile_model, but with dynamic shapes from the start: an
            # automatic static->dynamic recompile between a layer's forward and its activation-
            # checkpoint recomputation would replay a different graph.
            for layer in decoder.layers:
                layer.compile(dynamic=True)
        shard_split_decoder(model, reshard_after_forward=cfg.get("fsdp_reshard_after_forward", True))
        with training.set_default_dtype(self.dtype), self.device:
            for module in model.modules():
                if hasattr(module, "rope_init"):
                    module.rope_init()
        self.weights.load(model, self.checkpoints, self.device)
        training.validate_no_params_on_meta_device(model)
        return model, slots

    def _setup_lr_scheduler(self, cfg: DictConfig):
        """Warm-up from ``lr_scheduler.num_warmup_steps`` or, if absent, ``warmup_ratio`` of all steps."""
        if cfg.get("lr_scheduler") is None:
            return None
        if "num_warmup_steps" in cfg.lr_scheduler:
            return config.instantiate(cfg.lr_scheduler, self.optimizer, num_training_steps=self.total_steps)
        warmup = math.ceil((cfg.get("warmup_ratio") or 0.0) * self.total_steps)
        return config.instantiate(
            cfg.lr_scheduler, self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps
        )

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue exactly where the saved run stopped: weights are already loaded."""
        if self.is_rank_zero and state.get("config") is not None:
            changed = config_differences(state["config"], self.config_snapshot, RESUME_COMPARED_KEYS)
            if changed:
                log.warning(
                    f"Resuming {self.checkpoints.resume_dir} with settings that differ from the saved run: "
                    f"{'; '.join(changed)}. The checkpoint's optimizer and LR-scheduler state are restored, so "
                    "its learning rate and other optimizer hyperparameters stay in effect; data settings apply "
                    "as given, from the saved position in the data."
                )
        saved = (state["seed"], state["world_size"], state.get("sequence_parallel_size", 1), state["steps_per_epoch"])
        if saved != (now := (self.seed, self.world_size, self.parallel.sp, self.steps_per_epoch)):
            raise ConfigError(
                f"The checkpoint was made with (seed, world_size, sequence_parallel_size, steps_per_epoch) = {saved}; "
                f"this run has {now}. Resume with the same seed, data and processes."
            )
        training.load_from_full_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], self.device)
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.epochs_run, self.global_step = state["epoch"], state["global_step"]
        self.steps_in_epoch = state["steps_in_epoch"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.consecutive_skips = state.get("consecutive_skipped_steps", 0)
        if state["dataloader"] is not None:
            self.dataloader.load_state_dict(state["dataloader"])
        torch.set_rng_state(state["rng"][self.rank])
        if self.is_rank_zero:
            log.info(
                f"Resuming from {self.checkpoints.resume_dir} after step {self.global_step}: epoch "
                f"{min(self.epochs_run + 1, self.total_epochs)}, {self.steps_in_epoch} of {self.steps_per_epoch} "
                "steps done."
            )

    def train(self) -> None:
        """All epochs; a SIGTERM during training stops after the current step (focusft.preemption)."""
        with self.stops.deferring_sigterm():
            self._train()

    def _train(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for epoch in range(self.epochs_run, self.total_epochs):
            self.dataloader.sampler.set_epoch(epoch)
            progress = tqdm(
                total=self.steps_per_epoch,
                initial=self.steps_in_epoch,
                disable=not self.is_rank_zero,
                desc=f"epoch {epoch + 1}",
            )
            try:
                self._train_epoch(epoch, progress)
            finally:
                progress.close()  # also on an error, so that its message starts a line of its own
            if self.steps_in_epoch == self.steps_per_epoch:
                self.epochs_run, self.steps_in_epoch = epoch + 1, 0
                self._save(f"epoch_{epoch}", epoch + 1, mid_epoch=False)
            if self.stops.stop_agreed:
                raise Stopped(
                    signal.SIGTERM,
                    f"stopped by SIGTERM after step {self.global_step}; saved checkpoint "
                    f"{self.output_dir / self.last_saved}. Resume with resume_from_checkpoint=True.",
                    saved=True,
                )
            if self.global_step == self.stop_after_step:
                log.info(
                    f"Stopped after step {self.global_step} (stop_after_step); resume with resume_from_checkpoint=True."
                )
                return

    def _train_epoch(self, epoch: int, progress: tqdm) -> None:
        """Optimizer steps until the epoch ends or ``stop_after_step``, saving mid-epoch checkpoints."""
        stats = self._new_stats()
        start = time.perf_counter()
        done = self.steps_in_epoch * self.grad_accum  # micro-batches of the epoch run so far (a resume starts later)
        for batch in self.dataloader:
            self._micro_batch(batch, epoch, stats)
            done += 1
            if not self.epoch_steps.ends_step(done):
                continue
            lr, grad_norm, skipped = self._optimizer_step(stats)
            self.global_step += 1
            self.steps_in_epoch += 1
            progress.update(1)
            self._count_skip(skipped)
            if self.global_step % self.log_every_n_steps == 0:
                self._log(stats, lr, grad_norm, time.perf_counter() - start, progress)
            self._stop_if_diverged()
            if self.probe is not None and self.probe.due(self.global_step):
                self._probe_attention()
            stats, start = self._new_stats(), time.perf_counter()

            end_of_epoch = self.steps_in_epoch == self.steps_per_epoch
            stopping = self.global_step == self.stop_after_step
            stopping |= self.stops.agreed(self.device, failure=getattr(self.metric_logger, "failure", None))
            if not end_of_epoch and (
                stopping or (self.save_every_n_steps and self.global_step % self.save_every_n_steps == 0)
            ):
                self._save(f"step_{self.global_step}", epoch, mid_epoch=True)
            if end_of_epoch or stopping:
                return

    def _new_stats(self) -> torch.Tensor:
        num_inner = self.inner.steps + 1 if self.inner is not None else 1
        return torch.zeros(INNER_LOSSES + num_inner, dtype=torch.float64, device=self.device)

    def _micro_batch(self, batch: dict[str, torch.Tensor], epoch: int, stats: torch.Tensor) -> None:
        mb = prepare_batch(batch, self.device, self.focus.fast_weight_scope, self.parallel.sequence)
        mask = build_mask(mb.layout, self.focus.attention, self.mask_kind, dtype=self.dtype)
        initial = None
        if self.inner is not None and self.inner.steps > 0:
            seeds = [fast_weight_seed(self.seed, epoch, index) for index in mb.documents.sample_index]
            initial = self.slots.init(seeds, device=self.device)
        result = bilevel_step(
            self.model,
            self.slots,
            mb.tokens,
            mb.labels,
            mask=mask,
            input_pos=mb.input_pos,
            inner=self.inner,
            documents=mb.documents,
            initial_fast_weights=initial,
        )
        outer = outer_loss(
            result.token_losses, mb.labels, mb.layout, self.focus.loss_normalization, self.parallel.sequence
        )
        outer.loss.backward()
        tokens = result.num_tokens.double()
        stats[LOSS_SUM] += outer.loss.detach().double()
        stats[WEIGHT] += outer.weight
        stats[TOKENS] += tokens
        once = self.parallel.leads_sequence  # what the ranks of an SP group hold alike is counted once
        stats[INPUT_TOKENS] += mb.layout.valid.sum() * once
        stats[SKIPPED] += result.skipped_updates * once
        stats[DELTA_SUM] += result.delta_norms.double().sum() * once
        stats[FAST_WEIGHT_SETS] += mb.documents.count * once
        stats[DOCUMENTS] += outer.documents  # counted once per SP group by outer_loss
        stats[INNER_LOSSES:] += result.inner_losses.double() * tokens  # token-weighted across micro-batches

    def _optimizer_step(self, stats: torch.Tensor) -> tuple[float, float, bool]:
        """Average the gradients over the global batch's response tokens or documents, clip, step.

        Returns (lr, grad norm, skipped). The step is skipped on every rank when the outer
        loss or a θ-gradient is not finite on any rank: each rank flags its own gradient
        shards, and the flag travels in the statistics all-reduce the step makes anyway.
        The verdict reaches the host together with the grad norm, in one transfer.
        """
        stats[NON_FINITE_GRADS] = (~torch.isfinite(self._local_grad_norm())).double()
        all_reduce(stats)
        non_finite = ~torch.isfinite(stats[LOSS_SUM]) | (stats[NON_FINITE_GRADS] > 0)
        # FSDP averages gradients over ranks; world_size / weight makes it the mean per token or document.
        training.scale_grads(self.model, self.world_size / stats[WEIGHT].clamp(min=1).float())
        grad_norm = float("nan")
        if self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=float(self.clip_grad_norm))
            norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
            skip, grad_norm = torch.stack([non_finite.float(), norm.float()]).tolist()
        else:
            skip = non_finite.item()
        lr = get_lr(self.optimizer)
        if not skip:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            with warnings.catch_warnings():  # a skipped first step is not the misuse torch warns about
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
                self.lr_scheduler.step()  # the schedule follows the data steps, skipped or not
        return lr, grad_norm, bool(skip)

    def _local_grad_norm(self) -> torch.Tensor:
        """Norm of this rank's gradient shards: finite exactly when all of them are."""
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in self.model.parameters()]
        grads = [g for g in grads if g is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)

    def _count_skip(self, skipped: bool) -> None:
        if not skipped:
            self.consecutive_skips = 0
            return
        self.skipped_steps += 1
        self.consecutive_skips += 1
        if self.is_rank_zero:
            log.warning(
                f"Step {self.global_step}: the outer loss or a gradient of θ is not finite on at least one "
                f"process; skipped this optimizer step ({self.consecutive_skips} in a row, "
                f"{self.skipped_steps} in this run)."
            )

    def _stop_if_diverged(self) -> None:
        if self.consecutive_skips < self.max_consecutive_skips:
            return
        latest = latest_name(self.output_dir)
        kept = f"{latest} stays LATEST" if latest is not None else "no checkpoint was written"
        raise TrainingError(
            f"{self.consecutive_skips} optimizer steps in a row (up to step {self.global_step}) had a non-finite "
            f"outer loss or gradient (max_consecutive_skipped_steps={self.max_consecutive_skips}); stopped, "
            f"{kept}. Lower optimizer.lr or focusft.inner_lr, or check the data, then resume."
        )

    def _log(self, stats: torch.Tensor, lr: float, grad_norm: float, seconds: float, progress: tqdm) -> None:
        if not self.is_rank_zero:
            return
        tokens = stats[TOKENS].clamp(min=1)
        metrics = {
            "loss": (stats[LOSS_SUM] / stats[WEIGHT].clamp(min=1)).item(),
            "lr": lr,
            "grad_norm": grad_norm,
            "response_tokens": int(stats[TOKENS].item()),
            "tokens_per_second_per_gpu": stats[INPUT_TOKENS].item() / (seconds * self.world_size),
            "step_seconds": seconds,
        }
        if self.inner is not None:
            inner = (stats[INNER_LOSSES:] / tokens).tolist()
            for step in range(self.inner.steps):
                metrics[f"inner_loss_before_{step}"] = inner[step]
                metrics[f"inner_loss_after_{step}"] = inner[step + 1]
            metrics["inner_skipped_updates"] = int(stats[SKIPPED].item())
            metrics["fast_weight_delta_norm"] = (stats[DELTA_SUM] / stats[FAST_WEIGHT_SETS]).item()
            metrics["documents"] = int(stats[DOCUMENTS].item())
        metrics["skipped_steps"] = self.skipped_steps
        metrics |= self._memory_stats()
        self.metric_logger.log_dict(metrics, step=self.global_step)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")

    def _probe_attention(self) -> None:
        """Attention metrics of the probe sample: a forward that every rank runs; rank 0 logs."""
        with whole_sequences(self.model):  # every rank measures the whole probe row
            metrics = self.probe.measure(self.model)
        if self.is_rank_zero:
            self.metric_logger.log_dict(metrics, step=self.global_step)

    def _memory_stats(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return training.get_memory_stats(device=self.device)
        return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}

    def _save(self, name: str, next_epoch: int, mid_epoch: bool) -> None:
        """Gather the full weights and optimizer state (collective), then write on rank 0.

        A save that rank 0 refuses (weights not finite, disk full) stops every rank.
        """
        final = not mid_epoch and next_epoch == self.total_epochs
        model_state, adapter = self.weights.checkpoint(self.model, self.is_rank_zero, self.device, final)
        optimizer_state = training.get_full_optimizer_state_dict(
            self.model, self.optimizer, self.is_rank_zero, device=self.device
        )
        rng = [None] * self.world_size
        all_gather_object(rng, torch.get_rng_state())
        if self.is_rank_zero:
            recipe_state = {
                "seed": self.seed,
                "world_size": self.world_size,
                "sequence_parallel_size": self.parallel.sp,
                "epoch": next_epoch,
                "global_step": self.global_step,
                "steps_in_epoch": self.steps_in_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "dataloader": self.dataloader.state_dict() if mid_epoch else None,
                "optimizer": optimizer_state,
                "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "rng": rng,
                "skipped_steps": self.skipped_steps,
                "consecutive_skipped_steps": self.consecutive_skips,
                "config": self.config_snapshot,
            }
        failure = [None]
        if self.is_rank_zero:
            try:
                path = self.checkpoints.save(name, model_state, recipe_state, step=self.global_step, adapter=adapter)
                log.info(f"Saved checkpoint {path}")
            except CheckpointError as error:
                failure = [str(error)]
        broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            raise CheckpointError(failure[0])
        self.last_saved = name

    def cleanup(self) -> None:
        if self.is_rank_zero:
            self.metric_logger.close()
        destroy_process_group()


# Errors whose message is written for the user, and the word that names them.
USER_ERRORS: dict[type[Exception], str] = {
    ConfigError: "config",
    DataError: "data",
    CheckpointError: "checkpoint",
    TrainingError: "training",
    MetricsError: "metrics",
}


def _metrics_destination(cfg: DictConfig) -> str:
    """Where the configured metric logger writes (its ``log_dir``, or wherever the logger itself sends them)."""
    return str(cfg.metric_logger.get("log_dir") or "the logger's own destination")


def exit_with_error(error: Exception) -> None:
    """One readable line ``FocuSFT <kind> error: …`` instead of a traceback, and exit code 3.

    Every rank that hits the error prints it: torchrun stops the other ranks as soon as
    the first one exits, so a line printed by rank 0 alone can be lost.
    """
    kind = next(word for cls, word in USER_ERRORS.items() if isinstance(error, cls))
    message = " ".join(str(error).split())
    print(f"FocuSFT {kind} error: {message}", file=sys.stderr, flush=True)
    if torch.distributed.is_initialized():
        destroy_process_group()
    sys.exit(REPORTED_ERROR_EXIT_CODE)


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    stops = install_stop_signals()
    try:
        _run(cfg)
    except Stopped as stopped:
        report_stop(stopped, is_rank_zero=_is_rank_zero(), output_dir=cfg.get("output_dir"))
    except Exception as error:
        if stops.received is None:
            raise
        # A collective broke because another process stopped first on the same signal (or was
        # killed): that process has said why; this one ends with the signal's exit code, quietly.
        report_stop(Stopped(stops.received, str(error)), is_rank_zero=False)


def _run(cfg: DictConfig) -> None:
    errors = tuple(USER_ERRORS)
    try:
        cfg, added = accept_additions(cfg)
        check_known_keys(cfg, added)
        recipe = FocuSFTRecipeDistributed(cfg=cfg, added=added)
        recipe.setup(cfg=cfg)
    except errors as error:
        exit_with_error(error)
    try:
        recipe.train()
        recipe.cleanup()
    except errors as error:
        exit_with_error(error)


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


if __name__ == "__main__":
    if "LOCAL_RANK" in os.environ:  # started by torchrun: do not outlive it
        exit_when_launcher_dies()
    sys.exit(recipe_main())
