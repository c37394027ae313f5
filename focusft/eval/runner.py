"""Run a suite: fetch every task's data first, then evaluate one model on each run and write the report.

Fetching first means a suite that cannot run (no network, a gated dataset, a
missing package) stops before hours of evaluation, with one line per task
saying what it needed, instead of a stack trace from deep inside ``datasets``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import lm_eval
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager
from lm_eval.utils import handle_non_serializable

from focusft.eval.errors import SuiteError
from focusft.eval.preflight import hub_unreachable_reason, ruler_length_problem
from focusft.eval.report import Report, scores_from_results, with_averages, write_report
from focusft.eval.suites import PAPER_DATA_SOURCES, PAPER_GENERATED_TASKS, TASKS_DIR, EvalRun


def is_network_error(err: BaseException) -> bool:
    """Whether ``err`` (or its cause) is a failed download: no connection, offline mode, a gated or missing repo."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # ConnectionError covers huggingface_hub's OfflineModeIsEnabled and datasets' "Couldn't reach".
    kinds = (ConnectionError, TimeoutError, DatasetNotFoundError, HfHubHTTPError, LocalEntryNotFoundError)
    while err is not None:
        if isinstance(err, kinds):
            return True
        err = err.__cause__ or err.__context__
    return False


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def load_run(run: EvalRun, model_args: dict[str, Any]) -> tuple[TaskManager, list[Any], list[str]]:
    """Build ``run``'s tasks (this downloads or generates their data); returns the failures as messages."""
    manager = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=run.builtin, metadata={**model_args, **run.metadata}
    )
    tasks, failures = [], []
    for name in run.tasks:
        if not manager.match_tasks([name]):
            raise SuiteError(f"Unknown task {name!r}: lm-eval {lm_eval.__version__} has no task or group of that name.")
        source = PAPER_DATA_SOURCES.get(name, "its dataset")
        tokenizer = model_args.get("tokenizer") or run.metadata.get("tokenizer") or "of the model"
        at = f" at {', '.join(run.lengths)}" if run.lengths else ""
        unfit = (
            f"task {name}{at} has no sample: its generator fits none within the lengths with the tokenizer "
            f"{tokenizer}; use longer lengths or the tokenizer of a real Qwen2.5 model"
        )
        try:
            built = list(manager.load(name)["tasks"].values())  # suites name leaf tasks, never groups
        except ImportError as err:
            failures.append(f"task {name} needs the Python package '{err.name}' (pip install 'focusft[paper]'): {err}")
            continue
        except ZeroDivisionError:  # a generator dividing by the number of samples or words it could fit
            failures.append(unfit)
            continue
        except Exception as err:
            if not is_network_error(err):
                raise
            failures.append(f"task {name} needs network access to download {source}: {first_line(err)}")
            continue
        if any(not _has_docs(task) for task in built):  # lm-eval would divide by zero when scoring it
            failures.append(unfit)
        tasks += built
    return manager, tasks, failures


def _has_docs(task: Any) -> bool:
    """Whether an lm-eval task has evaluation documents (a task it cannot count is assumed to have some)."""
    try:
        return len(task.eval_docs) > 0
    except (AttributeError, TypeError):
        return True


def offline_failures(runs: list[EvalRun], reason: str) -> list[str]:
    """One line per paper task that needs the Hub, naming the lengths it was asked for."""
    lengths: dict[str, list[str]] = {}
    for run in runs:
        for task in run.tasks:
            if run.builtin and task not in PAPER_GENERATED_TASKS:
                lengths.setdefault(task, []).extend(run.lengths)
    return [
        f"task {task}{' at ' + ', '.join(at) if at else ''} needs network access to download "
        f"{PAPER_DATA_SOURCES.get(task, 'its dataset')}; {reason}"
        for task, at in lengths.items()
    ]


def ruler_failures(runs: list[EvalRun], model_args: dict[str, Any]) -> list[str]:
    """Lines for RULER tasks whose generator cannot reach the run's lengths with the model's tokenizer."""
    from lm_eval.tasks.ruler.common_utils import get_tokenizer, resolve_tokenizer_name

    failures = []
    for run in runs:
        generated = [task for task in run.tasks if task in PAPER_GENERATED_TASKS]
        if not generated:
            continue
        name = resolve_tokenizer_name({**model_args, **run.metadata})
        if name is None:
            raise SuiteError("RULER tasks need a tokenizer to size their data: pass --model_args tokenizer=DIR.")
        tokenizer = get_tokenizer(name)
        lengths = [int(length) for length in run.metadata["max_seq_lengths"]]
        for task in generated:
            problem = ruler_length_problem(task, tokenizer, lengths)
            if problem:
                at = ", ".join(run.lengths)
                failures.append(f"task {task} at {at} cannot be generated with the tokenizer {name}: {problem}")
    return failures


def fetch_suite(runs: list[EvalRun], model_args: dict[str, Any]) -> list[tuple[EvalRun, TaskManager, list[Any]]]:
    """Build every run's tasks before any model is loaded; raises one :class:`SuiteError` listing all failures.

    Whether the Hub answers is asked once, up front: without it the tasks that need it
    fail at once (one line each) instead of each retrying its download.
    """
    if any(run.builtin and set(run.tasks) - set(PAPER_GENERATED_TASKS) for run in runs):
        reason = hub_unreachable_reason()
        if reason is not None:
            raise SuiteError("The suite cannot run:\n  " + "\n  ".join(offline_failures(runs, reason)))
    loaded = []
    failures: list[str] = ruler_failures(runs, model_args)
    if failures:
        raise SuiteError("The suite cannot run:\n  " + "\n  ".join(failures))
    for run in runs:
        manager, tasks, run_failures = load_run(run, model_args)
        loaded.append((run, manager, tasks))
        failures += run_failures
    if failures:
        raise SuiteError("The suite cannot run:\n  " + "\n  ".join(failures))
    return loaded


def evaluate_suite(
    loaded: list[tuple[EvalRun, TaskManager, list[Any]]],
    lm: LM,
    *,
    label: str,
    output_dir: str | Path,
    meta: dict[str, Any],
    limit: float | None = None,
    apply_chat_template: bool = False,
    reference: bool = False,
    log_samples: bool = False,
) -> Report:
    """Evaluate ``lm`` on every fetched run, save lm-eval's raw results per run and the report of all of them.

    With ``log_samples``, every scored sample (prompt, output, target, metrics) goes to
    ``lm_eval/<run>_samples_<task>.jsonl``, one JSON object a line.
    """
    out = Path(output_dir)
    (out / "lm_eval").mkdir(parents=True, exist_ok=True)
    scores = []
    for run, manager, tasks in loaded:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,
            limit=limit,
            apply_chat_template=apply_chat_template,
            log_samples=log_samples,
            bootstrap_iters=1000,
        )
        for task, samples in (results.pop("samples", None) or {}).items():
            lines = (json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) for sample in samples)
            (out / "lm_eval" / f"{run.name}_samples_{task}.jsonl").write_text("".join(f"{line}\n" for line in lines))
        (out / "lm_eval" / f"{run.name}.json").write_text(
            json.dumps(results, indent=2, default=handle_non_serializable)
        )
        scores += scores_from_results(results)
    report = Report(
        label=label,
        scores=with_averages(scores),
        meta={**meta, "lm_eval": lm_eval.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds")},
    )
    write_report(report, out, reference=reference)
    return report
