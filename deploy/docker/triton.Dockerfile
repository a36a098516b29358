# clead on Triton: `clead-serve triton`, PyTriton's bundled Triton server, in a container.
#
#   docker build -f deploy/docker/triton.Dockerfile -t clead-triton:0.1.0 .            # from the repo root
#   docker run --init --rm --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 clead-triton:0.1.0
#   docker run --init --rm --shm-size=1g --gpus all -p 8000:8000 clead-triton:0.1.0    # NVIDIA GPUs
#
# Base: the official Python image (Debian bookworm: glibc 2.36, which PyTriton's bundled
# tritonserver needs, and a shared libpython, which Triton's Python stub loads). PyTriton
# carries its own Triton binary, so nvcr.io's tritonserver image is not needed; torch's PyPI
# wheels carry CUDA. Triton speaks the KServe v2 / Open Inference Protocol natively
# (examples/oip_client.py).
FROM python:3.11-slim-bookworm

RUN useradd --create-home --uid 1000 clead
WORKDIR /opt/clead

# The main environment (torch, Pillow, this project), as `make setup` makes it.
COPY pyproject.toml README.md ./
COPY training/ training/
COPY serving/ serving/
COPY demo/ demo/
RUN python -m pip install --no-cache-dir -e .

# The Triton environment (nvidia-pytriton pins numpy<2), which `clead-serve triton` would
# otherwise create on first start: made at build time so a container starts offline.
ENV CLEAD_TRITON_VENV=/opt/clead/.venv-triton
RUN python -c "from serving.tritonenv import ensure_env; ensure_env()" \
 && chown -R clead:clead /opt/clead/.venv-triton

COPY models/cifar10/ models/cifar10/
USER clead

# 8000: HTTP (KServe v2), 8001: gRPC, 8002: Prometheus metrics (nv_inference_*).
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]

# Exec form: clead-serve is PID 1; SIGTERM (docker stop) stops Triton and its stubs cleanly.
ENTRYPOINT ["clead-serve", "triton"]
CMD ["--host", "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002"]
