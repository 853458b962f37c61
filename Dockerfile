# The one application image; each Deployment picks its service with `python -m ...`.
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home app
WORKDIR /app
COPY pyproject.toml ./
COPY services ./services
COPY devstack ./devstack
COPY gen ./gen
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir .
ENV PYTHONPATH=/app:/app/gen/python PYTHONUNBUFFERED=1
USER 10001
