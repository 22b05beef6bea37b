# The mle-stream image: one image for every component, chosen by the first argument
# (`docker run IMAGE worker --topology ...`, `... actuator --topology ... --gitops-repo ...`).
#
#   docker build -t mle-stream:local .
#   docker run --rm mle-stream:local --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: the GitOps routing backend shells out to it (init, commit, push). ca-certificates: a push to
# an https remote and an https MLflow server need the system trust store.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot and set fsGroup without a passwd
# lookup (k8s/base/*-deployment.yaml and k8s/components/ingest/ use 10001 too).
RUN groupadd --system --gid 10001 mle \
    && useradd --system --uid 10001 --gid mle --home-dir /home/mle --create-home --shell /usr/sbin/nologin mle

# Only what the wheel is built from: no .dockerignore is needed to keep .git, tests or local
# MLflow databases out of the build context's layers.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY topologies ./topologies
COPY mle_stream ./mle_stream
# The worker's and the actuator's extras only: no embedded broker, and mlflow-skinny (a client of
# an MLflow tracking server) instead of the full MLflow server with its web and database stacks.
RUN pip install '.[worker,actuator]' && rm -rf /src

# /var/lib/mle-stream: the working directory (Faust creates its data directory in the working
# directory). /var/lib/mle-stream/gitops: the actuator's GitOps checkout. Both exist in the image
# and belong to the runtime user so that a fresh Docker named volume mounted there inherits that
# ownership. /etc/mle-stream/topologies: where topology files are mounted (read-only).
# safe.directory: on Kubernetes an emptyDir or PVC is owned by root with group fsGroup, and git
# refuses to work in a repository whose top directory another user owns ("dubious ownership").
RUN mkdir -p /var/lib/mle-stream/gitops /etc/mle-stream/topologies \
    && chown -R mle:mle /var/lib/mle-stream \
    && git config --system --add safe.directory /var/lib/mle-stream/gitops

WORKDIR /var/lib/mle-stream
# Numeric, not "mle": the kubelet can only enforce runAsNonRoot when the image's user is a number.
USER 10001:10001

ENTRYPOINT ["mle-stream"]
CMD ["--help"]
