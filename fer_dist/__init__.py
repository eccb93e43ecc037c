"""fer_dist: distributed facial-emotion-recognition training (FER-2013, Keras ResNet50, Ray).

python jobs/train.py            # embedded demo on the built-in dataset
"""

import os as _os

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
IMAGE_PIXELS = 48

__version__ = "0.1.0"
