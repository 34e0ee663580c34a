# One image for web, worker, beat and runtime (docker-compose.yml picks the command); on its own,
# `docker run -p 8000:8000 modelfleet` runs all of them with `modelfleet up` (SQLite, embedded Valkey).

# The front-end packages, exactly as package-lock.json pins them.
FROM node:20-slim AS frontend
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# The wheel: setup.py copies the templates, static files and the few built npm files into it.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY dashboard ./dashboard
COPY endpoints_app ./endpoints_app
COPY templates ./templates
COPY static ./static
COPY --from=frontend /src/node_modules ./node_modules
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    DJANGO_SETTINGS_MODULE=dashboard.settings \
    MODELFLEET_DATA_DIR=/data \
    MODELFLEET_STATIC_ROOT=/app/staticfiles \
    MODELFLEET_BIND=0.0.0.0:8000
COPY --from=wheel /wheels /tmp/wheels
# Optional extras, e.g. --build-arg MODELFLEET_EXTRAS=ray for the ray backend and its Ray nodes.
ARG MODELFLEET_EXTRAS=""
RUN wheel=$(ls /tmp/wheels/*.whl) && pip install --no-cache-dir "${wheel}${MODELFLEET_EXTRAS:+[$MODELFLEET_EXTRAS]}" \
    && rm -rf /tmp/wheels
# Static files hashed and compressed once, here; `modelfleet up` finds them current and writes
# nothing. Loading the settings writes a generated secret key into the data dir: a throwaway one.
RUN MODELFLEET_DATA_DIR=/tmp/build-data django-admin collectstatic_if_changed && rm -rf /tmp/build-data
RUN useradd --create-home --uid 1000 modelfleet && mkdir -p /data && chown modelfleet /data
USER modelfleet
WORKDIR /home/modelfleet
EXPOSE 8000
# Process up (web answers); compose's web service asks /readyz instead (database, Redis, registry).
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["modelfleet", "up"]
