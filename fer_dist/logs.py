"""Logging setup of every process: a job's driver and each Ray worker (`launch.train_loop`).

    python jobs/train.py          # HH:MM:SS I message, on stderr

One format on stderr (time, level letter, message); the chatty libraries (TensorFlow,
absl, matplotlib, Google clients, ...) only log warnings.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


__all__ = ["setup_logging"]
