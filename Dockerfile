# One image for web, worker, beat and runtime (docker-compose.yml picks the command).
FROM node:20-slim AS frontend
WORKDIR /app
COPY package.json ./
RUN npm install --no-audit --no-fund --loglevel=error

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    MODELFLEET_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dashboard ./dashboard
COPY endpoints_app ./endpoints_app
COPY templates ./templates
COPY static ./static
COPY manage.py ./
RUN pip install --no-cache-dir .
COPY --from=frontend /app/node_modules ./node_modules
RUN useradd --create-home --uid 1000 modelfleet && mkdir -p /data && chown modelfleet /data
USER modelfleet
EXPOSE 8000
CMD ["modelfleet", "up"]
