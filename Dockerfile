# syntax=docker/dockerfile:1
#
# ringpipe server image: a slim Python base, one non-root user, `ringpipe serve` as PID 1.
#
#   docker build -t ringpipe .
#   docker run --rm -p 8080:8080 --shm-size=1g -e RINGPIPE_MAX_MEMORY=960M ringpipe
#
# Shared memory (/dev/shm): every established pipe holds one ring of --ring-bytes (default
# 1 MiB) plus a small header (under 32 KiB even at ?n=256) in /dev/shm, so
#     needed /dev/shm  =  ring bytes x concurrent established pipes  (+ ~3 % for headers)
# e.g. 1000 concurrent pipes x 1 MiB = 1000 MiB -> --shm-size=1g (compose: shm_size,
# Kubernetes: a memory-backed emptyDir at /dev/shm). Docker's default /dev/shm is only
# 64 MiB, and a ring that outgrows tmpfs kills its worker with SIGBUS, so --max-memory
# (RINGPIPE_MAX_MEMORY, total ring bytes; beyond it new transfers get a clean 503) must stay
# below the shm size. The server's own default is 2 GiB (--shm-size=2g plus headroom); this
# image defaults to 56M so that a plain `docker run` (64 MiB of /dev/shm) answers 503 instead
# of crashing: raise both together.
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
