# genq: one image for every process (api, worker, scheduler, migrate).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GENQ_DATA_DIR=/data \
    GENQ_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY genq ./genq
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY sql ./sql
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data genq \
    && mkdir -p /data/storage && chown -R genq /data

USER genq
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["genq"]
CMD ["up", "--host", "0.0.0.0", "--port", "8000"]
