"""Running pipelines: ``run`` / ``arun`` (one query), ``run_batch`` / ``arun_batch`` (many),
``replay`` (a recorded run from its trace), and their :class:`Result`."""

from .api import arun, run
from .batch import arun_batch, run_batch
from .loop import background_loop, run_sync
from .replay import areplay, replay
from .result import Result

__all__ = ["Result", "arun", "arun_batch", "areplay", "background_loop", "replay", "run", "run_batch", "run_sync"]
