# clead on TorchServe: `clead-serve up`, the command `make serve` runs, in a container.
#
#   docker build -f deploy/docker/torchserve.Dockerfile -t clead-torchserve:0.1.0 .    # from the repo root
#   docker run --init --rm -p 8080:8080 -p 8082:8082 clead-torchserve:0.1.0
#   docker run --init --rm --gpus all -p 8080:8080 clead-torchserve:0.1.0              # NVIDIA GPUs
#
# Base: the official Python image (Debian bookworm), not pytorch/torchserve: the artifacts are
# TorchScript written by the torch this project pins (pyproject.toml), and the TorchServe
# image ships an older torch. torch's PyPI wheels carry their own CUDA libraries, so the
# same image runs on CPU and, with the NVIDIA container toolkit, on GPUs.
FROM python:3.11-slim-bookworm

# Java for TorchServe's frontend: the package `make system-deps` installs on Debian.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 clead
WORKDIR /opt/clead

# What `make setup` installs (pip install -e '.[serving]'), from the same sources.
COPY pyproject.toml README.md ./
COPY training/ training/
COPY serving/ serving/
COPY demo/ demo/
RUN python -m pip install --no-cache-dir -e ".[serving]"

# The shipped models, where `clead-serve up` looks by default (--models-dir models/cifar10).
COPY models/cifar10/ models/cifar10/
RUN mkdir -p runs/serve && chown -R clead:clead runs
USER clead

# 8080: inference (the front), 8082: Prometheus metrics. Management (8081) and gRPC stay on
# 127.0.0.1 inside the container.
EXPOSE 8080 8082
# /health: the front's key-free health endpoint (200 once every model's workers are READY).
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

# Exec form: clead-serve is PID 1 and gets docker stop's SIGTERM, which stops the front and
# TorchServe in order (--init reaps any orphan). Token authorization stays on, as with
# `make serve`: the keys are in /opt/clead/runs/serve/key_file.json inside the container
# (docker exec CONTAINER cat runs/serve/key_file.json). Behind a load balancer every replica
# would have its own random keys, so the Kubernetes manifests pass --no-token-auth instead
# (see docs/deploy.md).
ENTRYPOINT ["clead-serve", "up"]
CMD ["--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--inference-port", "8080", "--management-port", "8081", "--metrics-port", "8082"]
