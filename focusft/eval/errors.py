"""Errors whose message is written for the user; ``focusft-eval`` prints them without a traceback."""


class EvalError(ValueError):
    """Bad input to the evaluation tools: a wrong checkpoint, task, length or argument."""


class CheckpointError(EvalError):
    """A checkpoint directory that cannot be loaded; the message names the file and field."""


class SuiteError(EvalError):
    """A suite that cannot run (its data cannot be fetched, an unknown task)."""
