"""A container's view for tests that run the image's command: new PID and mount namespaces
(``unshare``) with a private 64 MiB ``/dev/shm``, where the machine permits them."""

from __future__ import annotations

import os
import subprocess

__all__ = ["CONTAINER", "CONTAINER_INIT", "Attached", "namespaces_work"]

#: A container's view, as far as a test can build one: PID 1 of a new PID namespace, and a
#: private 64 MiB /dev/shm (Docker's default) in a new mount namespace. The private /dev/shm
#: matters beyond realism: at start the supervisor sweeps segments of supervisors it cannot
#: see, and inside the namespace it sees none of the machine's other ringpipe servers.
CONTAINER = ["unshare", "--pid", "--fork", "--mount", "--kill-child", "sh", "-c"]


CONTAINER_INIT = 'mount -t tmpfs -o size=64m,mode=1777 shm /dev/shm && exec "$@"'


def namespaces_work() -> bool:
    probe = [*CONTAINER, CONTAINER_INIT, "sh", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Attached:
    """``Popen``-like handle on the command inside the namespace wrapper (signals go to it;
    its exit status is the wrapper's, which ``unshare --fork`` passes through)."""

    def __init__(self, pid: int, wrapper: subprocess.Popen[bytes]) -> None:
        self.pid, self.wrapper = pid, wrapper

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def poll(self) -> int | None:
        return self.wrapper.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.wrapper.wait(timeout)
