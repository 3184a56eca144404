"""A quiet console: Lightning's progress bar, errors and warnings, and the project's own lines.

Lightning's informational messages (seed, hardware, checkpoint restores, its advertising tip) still go to the
run's ``run.log`` through Hydra's file handler; only their console copy is dropped. A few warnings that say
nothing a user can act on are filtered out: a deprecation inside Lightning's own code, and advice about this
project's deliberate settings (single-process data loading, short epochs in smoke runs, a new folder for
every run).
"""

from __future__ import annotations

import logging
import warnings

IGNORED_WARNINGS = (
    r".*treespec, LeafSpec.*",                      # lightning/pytorch/utilities/_pytree.py, not ours to change
    r".*is smaller than the logging interval.*",    # tiny runs (fast_dev_run, tests) log less often than 10 steps
    r".*does not have many workers.*",              # data.num_workers=0 is the default on purpose (2 CPU cores)
    r".*The dirpath has changed from.*",            # every run has its own folder, also a resumed or tested one
)


def quiet_console() -> None:
    """Send Lightning's INFO lines to the run log only and drop the warnings above (idempotent)."""
    import lightning  # noqa: F401  (adds its console handler to the "lightning" logger on import)

    for handler in logging.getLogger("lightning").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
