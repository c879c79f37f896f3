# CUDA runtime matching the torch 2.14.1 wheels pinned in requirements.lock (cu130 builds).
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 WANDB_MODE=offline
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip libsndfile1 git && \
    rm -rf /var/lib/apt/lists/*

WORKDIR /workspace
COPY pyproject.toml README.md requirements.lock ./
COPY src ./src
COPY datamodules ./datamodules
COPY configs ./configs
COPY slurm ./slurm
COPY scripts ./scripts
RUN PYTHON=python3 bash scripts/setup.sh
ENV PATH=/workspace/.venv/bin:$PATH

ENTRYPOINT ["python", "-m", "src.train"]
