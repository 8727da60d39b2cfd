"""The errors a user can fix, in one place, each with the exit status ``rlmin`` gives it.

A :class:`UserError` is one line on stderr and ``exit_code`` (rlmin/cli.py reads it): 1 for a
runtime problem, 2 for a :class:`UsageError` (a command line or config that cannot work). Each class
also keeps its builtin base (ValueError, FileNotFoundError, ...), so ``except ValueError`` and
friends catch it as before. Control flow (``StopRequested``, ``EvaluationStopped``) is not here.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says what to do."""

    exit_code = 1  # a runtime problem


class UsageError(UserError, ValueError):
    """A command line that cannot work; the message says what to write instead."""

    exit_code = 2


# ============================================================================ exit 2
class ConfigError(UsageError):
    """A config that cannot be used; the message names the key and what to do."""


class RunDirError(UsageError):
    """A run dir that cannot be used for this run; the message says what to do instead."""


class OutputError(UsageError):
    """An output file that would replace what someone made, or cannot be written."""


class OptionError(UsageError):
    """A bad option of an agent or backbone; ``key`` is its dotted name inside the options
    (``backbone_options.expansion``), so a config error can name ``agent.<key>``."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class ReproError(UsageError):
    """A grid that cannot be planned, run or reported as asked; the message says what to change."""


# ============================================================================ exit 1
class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be written, found or loaded. The message says which file and what to do;
    ``reason`` (when set) is what was wrong with the file, in a few words, for lists of files."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class RegistryError(UserError, KeyError):
    """An unknown name in a registry group; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is not on disk (and was not to be, or could not be, downloaded)."""


class IncompleteDatasetError(DatasetNotFoundError):
    """A dataset folder is on disk but does not open (an interrupted build or copy)."""


class BadDatasetError(UserError, ValueError):
    """A dataset on disk whose metadata cannot be read (a malformed key); the message names the file."""


class BuildLockedError(UserError, RuntimeError):
    """Another process is building the same dataset right now."""


class DataError(UserError, ValueError):
    """A dataset rlmin cannot use as it is (unsupported space, bad values, wrong shapes, empty)."""


class VideoError(UserError, RuntimeError):
    """A video that cannot be made here; the message names the package or setting that fixes it."""


class EvalUsageError(UserError, ValueError):
    """An evaluation asked of a checkpoint that it cannot do (e.g. an acting mode its agent
    lacks); found before any episode runs. Exit 1 on its own; ``rlmin eval`` makes it a UsageError."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says what was kept."""


class TritonScanError(UserError, RuntimeError):
    """The Triton scan kernel could not be compiled or launched on this machine (one-line message)."""
