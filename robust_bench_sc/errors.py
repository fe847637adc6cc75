"""The run's error (a leaf: imports nothing of ours, so every layer can raise it).

:class:`RunError` is what a run refuses or cannot do, said in one line (the cli prints it
without a traceback): a folder that is not a run folder, records of other settings, a defense
that does not load or fit the data, an executor that is not installed, a job a remote worker
could not finish (``ray_executor.RayJobError``)."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run refused or stopped; the message is one line naming what and where."""
