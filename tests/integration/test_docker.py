"""The Dockerfile, without a Docker engine (none runs on CI machines).

What can be checked without one is checked on the real file: its COPY steps and its
``pip install`` step(s) run in a fresh virtualenv on a copy of the repository, and its
ENTRYPOINT + CMD, with its ENV, start a server that answers — as PID 1 of a new PID
namespace, the way a container runs it — and that drains on SIGTERM. The HEALTHCHECK
command is run against it. The image's shape (slim base, non-root user, EXPOSE, shm
arithmetic documented) is asserted from the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import uuid
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.containers import CONTAINER, CONTAINER_INIT, Attached, namespaces_work
from tests.support.pipes import get, put
from tests.support.servers import ROOT, Server, children_of, kill_group, shm_segments

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        logical = ""
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def env_of(steps: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for step in steps:
        if step.keyword == "ENV":
            for pair in shlex.split(step.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def steps() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def test_image_shape(steps: list[Instruction]) -> None:
    text = DOCKERFILE.read_text()
    base = [s.args for s in steps if s.keyword == "FROM"]
    assert base == ["python:3.11-slim"], "one stage on a slim Python 3.11 base"
    users = [s.args for s in steps if s.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the server must not run as root"
    assert [s.args for s in steps if s.keyword == "EXPOSE"] == ["8080"]
    assert env_of(steps)["PORT"] == "8080"
    health = [s.args for s in steps if s.keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    assert exec_form(next(s.args for s in steps if s.keyword == "ENTRYPOINT")) == ["ringpipe"]
    assert exec_form(next(s.args for s in steps if s.keyword == "CMD")) == ["serve"]
    assert "--shm-size" in text and "8 KiB x token streams + ring bytes x concurrent bulk pipes" in text
    # The image's ring cap fits Docker's default 64 MiB /dev/shm, headers included.
    cap = env_of(steps)["RINGPIPE_MAX_MEMORY"]
    assert cap.endswith("M") and int(cap[:-1]) * 33 // 32 < 64


def test_dockerignore_lets_every_copied_source_in(steps: list[Instruction]) -> None:
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    for step in steps:
        if step.keyword == "COPY":
            for source in shlex.split(step.args)[:-1]:
                assert source.rstrip("/") in allowed, f"{source} is copied but excluded by .dockerignore"


# -- the build steps and the command, for real --


@dataclass
class Image:
    """What the Dockerfile's build steps produced here: a venv and the image's workdir."""

    root: Path
    venv: Path
    env: dict[str, str]
    command: list[str]
    healthcheck: str

    def run_env(self, **overrides: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_") and k != "PORT"}
        path = f"{self.venv / 'bin'}{os.pathsep}{base.get('PATH', '')}"
        return {**base, **self.env, "PATH": path, **overrides}


def copy_step(args: str, workdir: Path, root: Path) -> None:
    """``COPY src... dest`` from the repository, with Docker's rules: a directory's contents
    go into ``dest``; files go into ``dest`` when it ends in ``/`` (or there are several)."""
    *sources, dest = shlex.split(args)
    target = root / dest.lstrip("/") if dest.startswith("/") else workdir / dest
    for source in sources:
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif dest.endswith("/") or len(sources) > 1:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / src.name)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


@pytest.fixture(scope="module")
def image(steps: list[Instruction], tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Replays WORKDIR, COPY and the ``pip install`` RUN steps in a fresh virtualenv."""
    root = tmp_path_factory.mktemp("image")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    workdir = root
    ran = 0
    for step in steps:
        if step.keyword == "WORKDIR":
            workdir = root / step.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            copy_step(step.args, workdir, root)
        elif step.keyword == "RUN" and "pip install" in step.args:
            env = {**os.environ, **env_of(steps), "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
            env.pop("VIRTUAL_ENV", None)
            done = subprocess.run(
                step.args, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, f"RUN {step.args} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            ran += 1
    assert ran, "the Dockerfile has no pip install step"
    assert (env_dir / "bin" / "ringpipe").exists(), "the install steps did not install the ringpipe command"
    entry = exec_form(next(s.args for s in steps if s.keyword == "ENTRYPOINT"))
    cmd = exec_form(next(s.args for s in steps if s.keyword == "CMD"))
    health = next(s.args for s in steps if s.keyword == "HEALTHCHECK")
    return Image(root, env_dir, env_of(steps), entry + cmd, health.split(" CMD ", 1)[1])


def pid_in_namespace(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError("no NSpid line")


@pytest.fixture
def container(image: Image) -> Iterator[tuple[Server, subprocess.Popen[bytes] | None]]:
    """The image's command with the image's ENV (host and port overridden as ``docker run -e``
    would: loopback, any free port). Yields the server (its ``proc`` is the command itself)
    and the namespace wrapper, or None where namespaces are not permitted."""
    env = image.run_env(RINGPIPE_HOST="127.0.0.1", PORT="0", RINGPIPE_WORKERS="2")
    isolated = namespaces_work()
    cmd = [*CONTAINER, CONTAINER_INIT, "sh", *image.command] if isolated else image.command
    wrapper = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, start_new_session=True)
    try:
        server = Server(wrapper)
        threading.Thread(target=server._pump, daemon=True).start()
        if not server._ready.wait(60):
            raise AssertionError("the image's command did not become ready:\n" + "\n".join(server.raw_lines[-30:]))
        if isolated:
            (inner,) = children_of(wrapper.pid)
            server.proc = Attached(inner, wrapper)  # type: ignore[assignment]
        else:
            print("\nunshare is not permitted here: the command runs without PID/mount namespaces")
        yield server, wrapper if isolated else None
    finally:
        if wrapper.poll() is None:
            kill_group(wrapper, wait=10)
        if wrapper.stderr is not None:
            wrapper.stderr.close()


@pytest.mark.slow(22)
def test_install_steps_and_command_serve_and_drain(
    container: tuple[Server, subprocess.Popen[bytes] | None], image: Image
) -> None:
    server, wrapper = container
    if wrapper is not None:
        assert pid_in_namespace(server.pid) == 1, "the image's command must be PID 1"
    path = "/" + uuid.uuid4().hex

    async def scenario() -> None:
        health = await get(server.port, "/healthz")
        assert health.status == 200
        receiver = asyncio.create_task(get(server.port, path))
        await asyncio.sleep(0.3)
        log = await put(server.port, path, b"from the image\n")
        got = await receiver
        assert log.status == 200 and got.body == b"from the image\n"

    asyncio.run(asyncio.wait_for(scenario(), 60))

    check = subprocess.run(["sh", "-c", image.healthcheck], env=image.run_env(PORT=str(server.port)), timeout=30)
    assert check.returncode == 0, "the HEALTHCHECK command failed against a running server"

    workers = server.workers()
    assert len(workers) == 2
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, "SIGTERM to PID 1 must drain and exit 0"
    assert server.wait_log(lambda r: r.get("msg") == "stopped", timeout=5)
    assert not [p for p in workers if Path(f"/proc/{p}").exists()], "workers left behind"
    if wrapper is None:
        assert not shm_segments(f"ringpipe-{server.pid}-")

    check = subprocess.run(
        ["sh", "-c", image.healthcheck], env=image.run_env(PORT=str(server.port)), capture_output=True, timeout=30
    )
    assert check.returncode != 0, "the HEALTHCHECK command passed with no server running"


def test_installed_command_runs_from_the_virtualenv_only(image: Image) -> None:
    """The venv's ringpipe imports the copied sources, not this checkout."""
    done = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", "import ringpipe; print(ringpipe.__file__)"],
        cwd=image.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert str(image.venv) in done.stdout and str(ROOT) not in done.stdout
