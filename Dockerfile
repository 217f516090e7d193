# Pigeon: a fast, safe SMS send engine.
#   docker build -t pigeon .
#   docker run --rm -v "$PWD/work:/work" -w /work pigeon send campaign.toml
#   docker run --rm -p 8080:8080 -v "$PWD/work:/work" pigeon serve --config engine.toml --host 0.0.0.0
#     (the service: SIGTERM, as `docker stop` sends, drains in-flight messages and exits 0)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/pigeon
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY plugins ./plugins
COPY config ./config
RUN pip install . && useradd --create-home --uid 10001 pigeon

USER pigeon
WORKDIR /work
EXPOSE 8080
ENTRYPOINT ["pigeon"]
CMD ["--help"]
