"""fer_dist: distributed facial-emotion-recognition training (FER-2013, Keras ResNet50, Ray).

python jobs/train.py            # embedded demo on the built-in dataset
"""

import os as _os

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it (TF_CPP_MIN_LOG_LEVEL=0
# or 1): set before TensorFlow is imported, in every process that imports fer_dist (Ray workers
# included: `ray_cluster.quiet_ray_loggers` imports it first), where the environment sets nothing.
# Level 2 hides its INFO and WARNING lines (the oneDNN notice among them); what it prints
# before that setting applies (absl's banner, the CUDA probe of a CPU-only machine) is dropped
# by `logs.quiet_tensorflow_import`.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's CPU kernels: TensorFlow turns them on by itself only on CPUs it deems new enough
# (AVX-512 and up), yet on an AVX2 machine they make the seed recipe's backward pass 4x faster
# (`benchmarks/step_profile.py`: forward+backward 1.08 s -> 0.26 s per step of
# batch 32). Set TF_ENABLE_ONEDNN_OPTS=0 to turn them off.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _pad_the_heap(megabytes: int = 64) -> None:
    """glibc malloc keeps `megabytes` of headroom each time its heap grows (M_TOP_PAD). Without
    it, a MultiWorkerMirroredStrategy worker (once its distributed input iterator exists) maps
    and unmaps each step's multi-MB tensors afresh, paying a page fault per 4 KB: the seed
    recipe's step at batch 32 on one thread took 283 ms against 217 ms with the pad, about what
    one process without a strategy takes (222 ms; `benchmarks/malloc_pad.py`). FER_DIST_HEAP_PAD=0 leaves
    malloc as it is; elsewhere (not glibc) a no-op."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or _os.environ.get("FER_DIST_HEAP_PAD") == "0":
        return
    try:
        ctypes.CDLL(None).mallopt(-2, megabytes << 20)  # M_TOP_PAD in glibc's malloc.h
    except (OSError, AttributeError):  # another C library without mallopt
        pass


_pad_the_heap()

from fer_dist import logs as _logs  # noqa: E402  (after the environment above)

_logs.quiet_tensorflow_import()

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
IMAGE_PIXELS = 48

__version__ = "0.1.0"
