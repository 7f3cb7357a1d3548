# The archive's image for docker-compose.yml: the library, the CLI and the Celery workers.
# PyAV's wheels carry FFmpeg, so no system media packages are needed to probe recordings.
FROM python:3.11-slim-bookworm
RUN useradd --system --create-home --home-dir /var/lib/archive archive
WORKDIR /opt/archive
COPY pyproject.toml README.md ./
COPY archive ./archive
COPY workers ./workers
COPY policies ./policies
RUN pip install --no-cache-dir . && mkdir -p /var/lib/archive/home && chown -R archive /var/lib/archive
USER archive
ENV ARCHIVE_HOME=/var/lib/archive/home ARCHIVE_POLICIES=/opt/archive/policies
ENTRYPOINT ["archive"]
