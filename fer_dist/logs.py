"""Logging setup of every process: a job's driver and each Ray worker (`ray_worker.train_loop_per_worker`).

    python jobs/train.py          # HH:MM:SS I message, on stderr

One format on stderr (time, level letter, message); the chatty libraries (TensorFlow,
absl, matplotlib, Google clients, ...) only log warnings.

TensorFlow's C++ start-up chatter is quieted before TensorFlow is imported, in every job and
every Ray worker (`fer_dist/__init__.py` installs `quiet_tensorflow_import`; the Ray workers'
setup hook, `ray_cluster.quiet_ray_loggers`, does it again): TF_CPP_MIN_LOG_LEVEL=2 hides its
INFO/WARNING lines (the oneDNN notice among them), but not what absl prints before it is
initialised ("WARNING: All log messages before absl::InitializeLog() ...", "Could not find
cuda drivers on your machine"), nor, on a machine without an NVIDIA GPU, the ERROR line
"failed call to cuInit". So the first `import tensorflow` (and the GPU probe just after it)
runs with the process's stderr (fd 2) sent to a temporary file; the lines are then written
back, less those banners. On a machine with an NVIDIA device whose CUDA fails to load, the
CUDA messages give way to one warning line saying so. Setting TF_CPP_MIN_LOG_LEVEL=0 or 1
yourself turns all of this off: every line is printed as TensorFlow writes it.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import time

from fer_dist.rank import worker_rank

log = logging.getLogger("fer_dist")


def setup_logging(verbose: bool = False) -> None:
    """The one format on stderr. In a Ray Train worker (called by `ray_worker.train_loop_per_worker`,
    after Ray Train has configured its own loggers): Ray's per-worker chatter is muted
    (`quiet_ray_chatter`), and a worker other than the chief logs warnings and errors only:
    the chief reports the run."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_tensorflow_import()
    quiet_ray_chatter()
    if not verbose and worker_rank() > 0:
        logging.getLogger().setLevel(logging.WARNING)


# Ray's own chatter in the processes of a job (a no-op where Ray is not imported):
# - Train V2's PlacementGroupCleaner asks the State API (served by the dashboard, which
#   `ray[train,tune]` does not install) whether the Train controller lives, once a second,
#   and logs a warning each time it cannot: a screenful per minute that says nothing about the run;
# - every Train worker's "Reporting training result N: TrainingReport(... metrics={...})" (one
#   dict per worker per epoch; a logger named by its file) and "Checkpoint successfully created
#   at ...": the chief logs one line per epoch.
# The controller's own messages (worker failures, restarts, waiting for resources) are kept.
RAY_CHATTER = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "ray.train.v2._internal.execution.storage": logging.WARNING,
    "{ray}/train/v2/_internal/execution/context.py": logging.WARNING,
}


def quiet_ray_chatter() -> None:
    """Sets the levels of RAY_CHATTER. Ray Train resets its child loggers when it configures a
    worker's logging, so a worker calls this again once that is done (`setup_logging`)."""
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "__file__", None):
        return
    for name, level in RAY_CHATTER.items():
        logging.getLogger(name.format(ray=os.path.dirname(ray.__file__))).setLevel(level)


@contextlib.contextmanager
def timed(what: str, logger: logging.Logger | None = None):
    """One log line when a step starts and one with its seconds when it ends:
    `with logs.timed("final evaluation"): ...`."""
    logger = logger or log
    logger.info("%s ...", what)
    start = time.perf_counter()
    yield
    logger.info("%s: done in %.1f s", what, time.perf_counter() - start)


# ---------------------------------------------------------------------------------
# TensorFlow's start-up banners.
# ---------------------------------------------------------------------------------
# A C++ log line: severity letter, MMDD, time, thread, file:line] message.
_CPP_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ (\S+?):\d+\] (.*)$")
_BANNERS = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"oneDNN custom operations are on"),
    re.compile(r"This TensorFlow binary is optimized to use available CPU instructions"),
    re.compile(r"To enable the following instructions: .* rebuild TensorFlow"),
    re.compile(r"TF-TRT Warning: Could not find TensorRT"),
)
# What a machine without a (usable) CUDA says while TensorFlow looks for one.
_CUDA_ABSENT = re.compile(
    r"Could not find cuda drivers|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"Attempting to register factory for plugin cu(DNN|FFT|BLAS)|could not retrieve CUDA device count|"
    r"kernel driver does not appear to be running|Could not load dynamic library '?lib(cuda|cudart|cudnn|cublas)|"
    r"Cannot dlopen some GPU libraries|cuda_diagnostics"
)


def _user_wants_tf_logs() -> bool:
    """TF_CPP_MIN_LOG_LEVEL set below 2 (0: everything, 1: no INFO) means: show TensorFlow's lines."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")) < 2
    except ValueError:
        return False


def nvidia_devices() -> list[str]:
    """The NVIDIA device files of this machine (none: no GPU TensorFlow could use)."""
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def gpus_hidden() -> bool:
    """CUDA_VISIBLE_DEVICES hides every GPU from this process (Ray does so for CPU-only workers)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible is not None and visible.strip() in ("", "-1", "NoDevFiles")


def banner_filter(lines: list[str], gpu_machine: bool) -> tuple[list[str], list[str]]:
    """Splits captured stderr lines into (kept, CUDA messages). Dropped: absl/oneDNN/CPU-feature
    banners and C++ INFO/WARNING lines; the CUDA-absent messages are returned apart (shown on a
    CPU-only machine: never; on a GPU machine: summed up in one line when no GPU was found)."""
    kept, cuda = [], []
    for line in lines:
        match = _CPP_LINE.match(line)
        if any(b.search(line) for b in _BANNERS):
            continue
        if _CUDA_ABSENT.search(line):
            cuda.append(match.group(3) if match else line.strip())
            continue
        if match and match.group(1) in "IW":
            continue
        kept.append(line)
    return kept, cuda


@contextlib.contextmanager
def _stderr_to_file():
    """Sends fd 2 (C++ and Python writes alike) to a temporary file; yields a list that holds
    the captured lines once the block ends."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield captured
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                tmp.seek(0)
                captured.extend(tmp.read().decode("utf-8", "replace").splitlines())
    finally:
        os.close(saved)


def _write_stderr(lines: list[str]) -> None:
    if lines:
        sys.stderr.flush()
        os.write(2, ("\n".join(lines) + "\n").encode())


def _quiet_exec(exec_module):
    """Wraps the tensorflow package's `exec_module`: the import and a GPU probe run with stderr
    captured; the banners are dropped, everything else is written back."""

    def exec_quietly(module) -> None:
        gpu_machine = bool(nvidia_devices()) and not gpus_hidden()
        found, captured = None, []
        try:
            with _stderr_to_file() as captured:
                exec_module(module)
                # TensorFlow looks for CUDA once per process: here rather than at the first op,
                # so that what it prints is caught too.
                found = module.config.list_physical_devices("GPU")
        finally:  # an import that fails shows every line it printed
            kept, cuda = banner_filter(captured, gpu_machine) if found is not None else (captured, [])
            _write_stderr(kept)
        if gpu_machine and not found:
            reason = next((c for c in cuda if "cuInit" in c or "driver" in c), cuda[0] if cuda else "")
            logging.getLogger("fer_dist").warning(
                "this machine has NVIDIA GPU devices (%s) but TensorFlow cannot use them%s; it runs on the CPU%s",
                ", ".join(nvidia_devices()),
                f": {reason}" if reason else "",
                "" if module.test.is_built_with_cuda() else ' (a TensorFlow without CUDA: pip install -e ".[gpu]")',
            )

    return exec_quietly


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, with the real finders, and makes its import quiet."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        if _user_wants_tf_logs():
            return None
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader.exec_module = _quiet_exec(spec.loader.exec_module)
        return spec


def quiet_tensorflow_import() -> None:
    """Makes this process's first `import tensorflow` quiet (see the module docstring). Does
    nothing when TensorFlow is already imported or TF_CPP_MIN_LOG_LEVEL is below 2."""
    if "tensorflow" in sys.modules or _user_wants_tf_logs():
        return
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


__all__ = ["setup_logging", "timed", "quiet_tensorflow_import", "quiet_ray_chatter", "banner_filter", "nvidia_devices"]
