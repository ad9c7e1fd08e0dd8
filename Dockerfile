# syntax=docker/dockerfile:1
#
# ringpipe server image: a slim Python base, one non-root user, `ringpipe serve` as PID 1.
#
#   docker build -t ringpipe .
#   docker run --rm -p 8080:8080 --shm-size=1g -e RINGPIPE_MAX_MEMORY=960M ringpipe
#
# Shared memory (/dev/shm): each worker keeps its rings in one sparse file there. A ring
# reserves a header page plus what its stream needs: 8 KiB for a short token stream, up to
# --ring-bytes + 4 KiB (default 1 MiB + 4 KiB) for a bulk transfer (docs/memory.md), and
# --max-memory (RINGPIPE_MAX_MEMORY) bounds the total as reserved, so
#     needed /dev/shm  ~  8 KiB x token streams + ring bytes x concurrent bulk pipes
# e.g. 10000 token streams -> 80 MiB; 1000 bulk pipes x 1 MiB -> --shm-size=1g (compose:
# shm_size, Kubernetes: a memory-backed emptyDir at /dev/shm). Keep --max-memory a little
# below the shm size, so a full budget answers 503 (memory limit) first; a full /dev/shm
# answers 503 too, never a SIGBUS. The server's own default is 2 GiB; Docker's default
# /dev/shm is 64 MiB, so this image defaults to 56M (about 7000 token streams, or 55 bulk
# transfers at once): raise both together.
#
# No Docker engine runs on ringpipe's CI machines: tests/integration/test_docker.py runs this
# file's COPY and `pip install` steps in a fresh virtualenv and starts its ENTRYPOINT + CMD
# (as PID 1 of a new PID namespace) with its ENV, then checks the HEALTHCHECK command.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ringpipe/ ./ringpipe/
RUN pip install --no-cache-dir .

# A system user without a home or shell; the server writes only to /tmp (its runtime
# directory) and /dev/shm (rings).
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ringpipe
USER 10001:10001

# Listen on every interface of the container. PORT is honoured (platforms set it).
# RINGPIPE_WORKERS defaults to the CPUs the process may run on, which in a container
# limited by --cpus is still every host CPU: set it to the CPU limit.
ENV RINGPIPE_HOST=0.0.0.0 \
    PORT=8080 \
    RINGPIPE_MAX_MEMORY=56M
EXPOSE 8080

# /healthz answers while the process is up (/readyz: every worker up and accepting, which
# is what a load balancer should check). Behind TLS (RINGPIPE_SSL_CERTFILE) override this.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"

# SIGTERM drains: the listener closes, waiting parties get 503, running transfers get
# RINGPIPE_GRACEFUL_TIMEOUT (30 s) to finish; give `docker stop -t` a little more than that.
# The supervisor is PID 1 (exec form, no shell): it handles SIGTERM/SIGINT/SIGQUIT itself
# and reaps every child, its workers and any orphan.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ringpipe"]
CMD ["serve"]
