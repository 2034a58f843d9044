"""The demo's output without the libraries' chatter, for the demo's duration only.

transformers, datasets and lm-eval draw progress bars, log and warn over the story the demo tells. While
the demo runs they are quiet; afterwards the process's logging, warning filters and environment are as
they were, so a notebook that runs the demo keeps its own settings.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

QUIET_ENV: Mapping[str, str] = {  # read by the libraries when they start (or on each bar): set before them
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set each variable the user has not set; remove exactly those again on exit."""
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """No progress bars, log records below ERROR or warnings from any library while inside; the
    environment, `logging.disable` level and warning filters restored on exit."""
    previous = logging.root.manager.disable
    with _environment(QUIET_ENV), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)
