# syntax=docker/dockerfile:1
# Three targets:
#   serve (the default, last stage): `python api.py`, what `make run` starts.
#     docker build -t elo7-categorizer .
#   train: runs treinamento.ipynb headless, what `make train` does.
#     docker build --target train -t elo7-categorizer-train .
#   batch: `python score.py INPUT OUTPUT`, what `make score` runs, with Java for Spark;
#   also the image of a Spark job's driver and executors (docs/operations.md).
#     docker build --target batch -t elo7-categorizer-batch .
#
# PYTHON_VERSION picks the image's Python. The default, 3.9, is .python-version's: the
# Python the committed model is reproduced on bit for bit. Its upstream security support
# ended in October 2025 and its images are no longer rebuilt, so for production prefer the
# newest Python that CI runs the whole suite on (.ci/run, 3.13), whose images still get
# fixes; requirements/*.txt carry the pins for it:
#     docker build --pull --build-arg PYTHON_VERSION=3.13 -t elo7-categorizer .
ARG PYTHON_VERSION=3.9
# A minor-version tag, neither a patch release nor a digest: a rebuild with --pull gets
# the latest patch release of that Python and Debian bookworm's security fixes. The
# Debian release is named so that a rebuild cannot switch it (and its glibc) unseen.
FROM python:${PYTHON_VERSION}-slim-bookworm AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A fixed, unprivileged, numeric uid: nothing needs root at run time, and a numeric
# USER lets Kubernetes verify runAsNonRoot.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app app
WORKDIR /app


FROM base AS train
# Dependencies first, in their own layer: code changes do not reinstall them.
COPY requirements/base.txt requirements/train.txt requirements/
RUN pip install --no-cache-dir -r requirements/train.txt
COPY categorizer/ categorizer/
COPY treinamento.ipynb ./
# data/ (the dataset CSV) and artifacts/ (model.onnx, figures, metrics) are
# volumes: see docker-compose.yml.
RUN mkdir -p data artifacts && chown 10001:10001 data artifacts
USER 10001:10001
# The user has no home: the kernel's connection files and matplotlib's cache go to /tmp.
ENV DATASET_PATH=data/elo7_recruitment_dataset.csv \
    HOME=/tmp \
    JUPYTER_RUNTIME_DIR=/tmp/jupyter \
    MPLCONFIGDIR=/tmp/matplotlib
CMD ["python", "-m", "categorizer.notebook", "treinamento.ipynb"]


FROM base AS batch
# Java for Spark's JVM (the spark engine; the local engine does not start it). Debian's
# package gets security fixes within its release, so it is not pinned to a version. Slim
# images drop /usr/share/man, where its post-install script links the man pages.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/base.txt requirements/batch.txt requirements/
RUN pip install --no-cache-dir -r requirements/batch.txt
COPY runtime/ runtime/
COPY batch/ batch/
COPY score.py ./
COPY artifacts/model.onnx artifacts/
# INPUT and OUTPUT on a volume (docker run -v "$PWD/data:/data"), or object storage.
RUN mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
# The user has no home: Spark and Ivy write under /tmp.
ENV HOME=/tmp
ENTRYPOINT ["python", "score.py"]
CMD ["--help"]


FROM base AS serve
COPY requirements/base.txt requirements/
RUN pip install --no-cache-dir -r requirements/base.txt
# Only what serving reads; files stay root-owned, so the service cannot change them.
COPY runtime/ runtime/
COPY service/ service/
COPY api.py ./
COPY artifacts/model.onnx artifacts/
USER 10001:10001
EXPOSE 8080
# No curl in slim images: the check uses Python's urllib, on PORT if it was changed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself (graceful drain, see docs/operations.md).
CMD ["python", "api.py"]
