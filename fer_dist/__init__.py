"""fer_dist: distributed facial-emotion-recognition training (FER-2013, Keras ResNet50, Ray).

python jobs/train.py            # embedded demo on the built-in dataset
"""

import os as _os

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it (TF_CPP_MIN_LOG_LEVEL=0
# or 1): set before TensorFlow is imported, here and (launch.PROPAGATED_ENV) in every Ray worker.
# Level 2 hides its INFO and WARNING lines (the oneDNN notice among them); what it prints
# before that setting applies (absl's banner, the CUDA probe of a CPU-only machine) is dropped
# by `logs.quiet_tensorflow_import`.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fer_dist import logs as _logs  # noqa: E402  (after the environment above)

_logs.quiet_tensorflow_import()

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
IMAGE_PIXELS = 48

__version__ = "0.1.0"
