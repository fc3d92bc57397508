# The NDT archive: `pacs serve` (DICOM on 11112, HTTP on 8042) with its data under /var/lib/pacs.
# Configure it with PACS_* variables (docs/configuration.md); docker-compose.yml runs it on
# PostgreSQL and MinIO.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every package pyproject.toml lists (tests/unit/test_dockerfile.py checks that none is missing).
COPY pyproject.toml README.md /tmp/src/
COPY storage /tmp/src/storage
COPY pacs /tmp/src/pacs
COPY dicom_nodes /tmp/src/dicom_nodes
COPY api /tmp/src/api
COPY viewer /tmp/src/viewer
RUN pip install /tmp/src && rm -rf /tmp/src

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/pacs --shell /usr/sbin/nologin pacs \
    && mkdir -p /var/lib/pacs \
    && chown pacs:pacs /var/lib/pacs

# A named volume takes this folder's owner; a bind-mounted folder must be writable by uid 10001.
USER pacs
WORKDIR /var/lib/pacs
ENV PACS_DATA_DIR=/var/lib/pacs
VOLUME /var/lib/pacs
EXPOSE 11112 2762 8042

# /health answers 200 only when the index and the object store both respond.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PACS_HTTP_PORT', '8042') + '/health', timeout=4)"]

CMD ["pacs", "serve"]
