# Pigeon: a fast, safe SMS send engine.
#   docker build -t pigeon .
#   docker run --rm -v "$PWD/work:/work" -w /work pigeon send campaign.toml
#   docker run --rm -p 8080:8080 -v "$PWD/work:/work" pigeon serve --config engine.toml --host 0.0.0.0
#     (the service: SIGTERM, as `docker stop` sends, drains in-flight messages and exits 0)

# The wheel, with the compiled batch kernels (engine/_speedups.c): the compiler stays in this stage.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY engine ./engine
COPY plugins ./plugins
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/pigeon
COPY --from=build /wheels /wheels
# The last check fails the build if the wheel came out without the compiled kernels.
RUN pip install /wheels/*.whl && rm -rf /wheels && useradd --create-home --uid 10001 pigeon \
    && python -c "from engine import speedups; assert speedups.ACCELERATED, 'no compiled kernels'"
COPY config ./config

USER pigeon
WORKDIR /work
EXPOSE 8080
ENTRYPOINT ["pigeon"]
CMD ["--help"]
