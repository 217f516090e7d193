# Pigeon: a fast, safe SMS send engine.
#   docker build -t pigeon .
#   docker run --rm -v "$PWD/work:/work" pigeon send campaign.toml
#   docker run --rm -p 8080:8080 -v "$PWD/work:/work" pigeon serve --engine engine.toml --host 0.0.0.0
#     (the service: SIGTERM, as `docker stop` sends, drains in-flight messages and exits 0)
# The container runs as uid 10001: a mounted work directory must be writable by it
# (`chown 10001 work`, or `docker run --user "$(id -u)"`), for the store, runs and API keys.
# Checked by hadolint in CI (.ci/run); docs/docker.md says what the image holds and why.

# Both stages on Debian 12 (bookworm), so that the pinned packages below exist and the kernels are
# built against the C library they run on.
# The wheel, with the compiled batch kernels (engine/core/_speedups.c): the compiler stays in this stage.
# gcc is Debian's meta package (fixed for the release); libc6-dev must equal the image's own libc6,
# which moves with bookworm's point releases: pinned to glibc 2.36 of bookworm, any stable update.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 'libc6-dev=2.36-9+deb12u*' \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY engine ./engine
COPY plugins ./plugins
COPY pigeon ./pigeon
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/pigeon
COPY --from=build /wheels /wheels
# The user the container runs as, and /work, its working directory, owned by it (the store, runs
# and keys are written there). The last check fails the build if the wheel came out without the
# compiled kernels.
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --gid 10001 pigeon \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin pigeon \
    && install -d -o 10001 -g 10001 -m 0750 /work \
    && python -c "from engine.core import speedups; assert speedups.ACCELERATED, 'no compiled kernels'"
# Example configs and their JSON Schemas, for reference (copy what you use into /work); .dockerignore
# keeps stores, keys and segments out of the build context, so none can ride along.
COPY config ./config

USER 10001:10001
WORKDIR /work
EXPOSE 8080
# `pigeon serve`: GET /healthz on its --host/--port (read from its command line). Any other command
# (a one-shot `pigeon send`) has no service and counts as healthy. Standard library only: no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "engine.cli.healthcheck", "--timeout", "4"]
ENTRYPOINT ["pigeon"]
CMD ["--help"]
