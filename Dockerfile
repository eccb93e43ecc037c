# The image every node of cluster.yaml runs (the `docker:` section): Python, the pinned Ray and
# TensorFlow with its CUDA libraries, and this project, installed once at build time instead of
# by pip on every autoscaled node at boot.
#
# Build and push (from the repository root; the tag must be cluster.yaml's docker.image, which
# names the pins: tests/test_cluster_yaml.py checks it against pyproject.toml):
#   gcloud artifacts repositories create fer-dist --repository-format=docker --location=us-central1
#   gcloud auth configure-docker us-central1-docker.pkg.dev
#   IMAGE=us-central1-docker.pkg.dev/PROJECT_ID/fer-dist/fer-dist:0.1.0-ray2.60.0-tf2.21.0
#   docker build --platform linux/amd64 -t $IMAGE . && docker push $IMAGE
# or without a local Docker:  gcloud builds submit --tag $IMAGE .
#
# GPUs: TensorFlow's pip CUDA libraries (tensorflow[and-cuda]) are in the image; only the NVIDIA
# driver comes from the VM, mounted by the NVIDIA container toolkit (`--gpus all` in
# cluster.yaml's worker_run_options). The head runs the same image without a GPU.
# For a fully reproducible base, replace the tag by its digest (python:3.11-slim-bookworm@sha256:...).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# rsync and ssh: the Ray cluster launcher copies files into the container with rsync, and the
# head's autoscaler reaches the workers with ssh.
RUN apt-get update \
    && apt-get install -y --no-install-recommends rsync openssh-client \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /opt/fer_dist

# 1) The dependencies, from pyproject.toml alone (an empty package stands in for the code), so
#    this large layer is rebuilt only when pyproject.toml changes. ray[default] adds the
#    dashboard and job server; pip resolves it together with the project's exact
#    ray[train,tune] pin, so both are the same version. google-api-python-client is what the
#    head's autoscaler uses to create VMs; it is here so that nothing is installed when a node
#    starts (cluster.yaml's head_setup_commands is empty).
COPY pyproject.toml README.md ./
RUN mkdir -p fer_dist/cli && touch fer_dist/__init__.py fer_dist/cli/__init__.py \
    && pip install ".[gpu]" "ray[default]" google-api-python-client \
    && rm -rf fer_dist build *.egg-info

# 2) The code (jobs normally ship their own copy with `ray job submit --working-dir .`).
COPY fer_dist ./fer_dist
COPY jobs ./jobs
RUN pip install --no-deps --force-reinstall . \
    && rm -rf build *.egg-info \
    && python -m fer_dist.versions
