"""Settings: defaults, environment parsing, and one-line validation messages (``ringpipe.config``)."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from ringpipe.core.config import LOG_LEVELS, ConfigError, Settings, options, parse_size, worker_share
from ringpipe.core.paths import owner_of

# -- defaults -------------------------------------------------------------------------------


def test_defaults() -> None:
    """A bare Settings() is a safe local server: loopback, port 8080, one worker per usable CPU, 1 MiB rings."""
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.port == 8080
    assert s.workers == len(os.sched_getaffinity(0))
    assert s.ring_bytes == 1 << 20
    assert s.max_receivers == 256
    assert s.graceful_timeout == 30.0
    assert s.log_level == "info"


def test_settings_are_frozen() -> None:
    """Settings cannot change after validation (workers is an input to owner_of)."""
    s = Settings(workers=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 3  # type: ignore[misc]


def test_settings_are_keyword_only() -> None:
    """Positional construction is refused, so adding a field never shifts meanings."""
    with pytest.raises(TypeError):
        Settings("0.0.0.0")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8080"), ("::1", "http://[::1]:8080"), ("localhost", "http://localhost:8080")],
)
def test_base_url_brackets_ipv6(host: str, url: str) -> None:
    """The advertised URL is usable as-is, IPv6 literals included."""
    assert Settings(host=host).base_url == url


# -- from_env -------------------------------------------------------------------------------


def test_from_env_empty_is_defaults() -> None:
    """No variables set: the same settings as Settings()."""
    assert Settings.from_env({}) == Settings()


def test_from_env_reads_every_ringpipe_variable() -> None:
    """Each field is settable as RINGPIPE_<NAME>, parsed to its type."""
    env = {
        "RINGPIPE_HOST": "0.0.0.0",
        "RINGPIPE_PORT": "9001",
        "RINGPIPE_WORKERS": "3",
        "RINGPIPE_RING_BYTES": "64k",
        "RINGPIPE_MAX_RECEIVERS": "10",
        "RINGPIPE_GRACEFUL_TIMEOUT": "2.5",
        "RINGPIPE_LOG_LEVEL": "DEBUG",
        "UNRELATED": "x",
    }
    assert Settings.from_env(env) == Settings(
        host="0.0.0.0",
        port=9001,
        workers=3,
        ring_bytes=65536,
        max_receivers=10,
        graceful_timeout=2.5,
        log_level="debug",
    )


def test_from_env_honours_port() -> None:
    """PORT (as set by PaaS platforms) picks the port; RINGPIPE_PORT is more specific and wins."""
    assert Settings.from_env({"PORT": "9000"}).port == 9000
    assert Settings.from_env({"PORT": "9000", "RINGPIPE_PORT": "9002"}).port == 9002


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, the process environment is read."""
    monkeypatch.setenv("RINGPIPE_WORKERS", "5")
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("RINGPIPE_PORT", raising=False)
    assert Settings.from_env().workers == 5


def test_overrides_beat_env_and_none_is_ignored() -> None:
    """CLI flags override the environment; flags left unset (None) do not."""
    env = {"RINGPIPE_WORKERS": "3", "RINGPIPE_PORT": "9001"}
    s = Settings.from_env(env, workers=7, port=None, host=None)
    assert (s.workers, s.port, s.host) == (7, 9001, "127.0.0.1")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("64k", 64 << 10),
        ("64K", 64 << 10),
        ("64KiB", 64 << 10),
        ("1M", 1 << 20),
        ("1MiB", 1 << 20),
        ("1mb", 1 << 20),
        (" 2m ", 2 << 20),
        ("1g", 1 << 30),
        ("1GiB", 1 << 30),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    """Ring sizes accept plain bytes and binary k/M/G suffixes, with or without 'iB'/'B'."""
    assert parse_size(text) == value
    assert Settings.from_env({"RINGPIPE_RING_BYTES": text}).ring_bytes == value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RINGPIPE_RING_BYTES": "1.5M"}, "RINGPIPE_RING_BYTES has a bad value: '1.5M'"),
        ({"RINGPIPE_RING_BYTES": "k"}, "RINGPIPE_RING_BYTES has a bad value: 'k'"),
        ({"RINGPIPE_RING_BYTES": "lots"}, "RINGPIPE_RING_BYTES has a bad value: 'lots'"),
        ({"RINGPIPE_WORKERS": "two"}, "RINGPIPE_WORKERS has a bad value: 'two'"),
        ({"RINGPIPE_WORKERS": ""}, "RINGPIPE_WORKERS has a bad value: ''"),
        ({"RINGPIPE_GRACEFUL_TIMEOUT": "soon"}, "RINGPIPE_GRACEFUL_TIMEOUT has a bad value: 'soon'"),
        ({"PORT": "http"}, "PORT has a bad value: 'http'"),
    ],
)
def test_unparsable_env_names_the_variable(env: dict[str, str], message: str) -> None:
    """A value that does not parse is a one-line ConfigError naming the variable and the value."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value) == message


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "--workers must be 1..256 (got 0)"),
        ({"workers": 257}, "--workers must be 1..256 (got 257)"),
        ({"ring_bytes": 5000}, "--ring-bytes must be a power of two from 4096 to 1073741824 (got 5000)"),
        ({"ring_bytes": 2048}, "--ring-bytes must be a power of two from 4096 to 1073741824 (got 2048)"),
        ({"ring_bytes": 1 << 31}, "--ring-bytes must be a power of two from 4096 to 1073741824 (got 2147483648)"),
        ({"max_receivers": 257}, "--max-receivers must be 1..256 (got 257)"),
        ({"max_receivers": 0}, "--max-receivers must be 1..256 (got 0)"),
        ({"log_level": "loud"}, "--log-level must be one of critical, error, warning, info, debug (got 'loud')"),
        ({"log_level": "INFO"}, "--log-level must be one of critical, error, warning, info, debug (got 'INFO')"),
        ({"port": 65536}, "--port must be 0..65535 (got 65536)"),
        ({"port": -1}, "--port must be 0..65535 (got -1)"),
        ({"port": "80"}, "--port must be 0..65535 (got '80')"),
        ({"graceful_timeout": -1}, "--graceful-timeout must be a finite number >= 0 (got -1)"),
    ],
)
def test_validation_messages(kwargs: dict[str, object], message: str) -> None:
    """Each bad value gives one CLI-ready line naming the flag, the rule and the value."""
    with pytest.raises(ConfigError) as info:
        Settings(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_validation_applies_to_env_values() -> None:
    """Values from the environment pass the same validators as flags, and the error names the variable."""
    with pytest.raises(ConfigError, match=r"^RINGPIPE_WORKERS must be 1\.\.256 \(got 0\)$"):
        Settings.from_env({"RINGPIPE_WORKERS": "0"})
    with pytest.raises(ConfigError, match=r"^RINGPIPE_RING_BYTES must be a power of two"):
        Settings.from_env({"RINGPIPE_RING_BYTES": "3k"})


def test_config_error_is_a_value_error() -> None:
    """Callers that guard a parse with ``except ValueError`` also catch bad settings."""
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("level", LOG_LEVELS)
def test_every_log_level_is_accepted(level: str) -> None:
    """Every advertised log level is a valid setting."""
    assert Settings(log_level=level).log_level == level


def test_boundaries_are_accepted() -> None:
    """The documented ranges are inclusive."""
    Settings(workers=1, ring_bytes=4096, max_receivers=1, port=0, graceful_timeout=0)
    Settings(workers=256, ring_bytes=1 << 30, max_receivers=256, port=65535)


# -- options --------------------------------------------------------------------------------


def test_options_follow_the_field_declarations() -> None:
    """The CLI declares one flag per field, in order, with help text, parser and default."""
    opts = {o.name: o for o in options()}
    assert list(opts) == [f.name for f in dataclasses.fields(Settings)]
    assert opts["ring_bytes"].flag == "--ring-bytes"
    assert opts["ring_bytes"].parse("1MiB") == 1 << 20
    assert opts["workers"].default == len(os.sched_getaffinity(0))
    assert opts["log_level"].parse("WARNING") == "warning"
    assert all(o.help for o in opts.values())


# -- SPEC Part 3/4 settings -----------------------------------------------------------------


def test_part_3_and_4_defaults() -> None:
    """The documented defaults of the pipe, limit and access settings."""
    s = Settings()
    assert (s.replay_bytes, s.wait_timeout, s.stall_timeout, s.reconnect_grace, s.heartbeat) == (
        256 << 10,
        300.0,
        30.0,
        10.0,
        15.0,
    )
    assert s.sender_response == "live"
    assert (s.max_watchers, s.max_header_bytes, s.max_path_bytes) == (1024, 16 << 10, 8192)
    assert s.token == () and s.cors_origins == "*" and not s.ssl_only


def test_replay_window_is_capped_at_half_the_ring() -> None:
    """A small ring keeps at most half of itself for replay, so the writer always has room."""
    assert Settings(ring_bytes=65536).replay_window == 32768
    assert Settings().replay_window == 256 << 10


def test_tokens_from_env_split_on_whitespace() -> None:
    env = {"RINGPIPE_TOKEN": "a:s1:send\nb:s2:recv,watch:/team/", "RINGPIPE_SSL_ONLY": "0"}
    s = Settings.from_env(env)
    assert s.token == ("a:s1:send", "b:s2:recv,watch:/team/")
    assert s.ssl_only is False


@pytest.mark.parametrize(
    ("token", "fragment"),
    [("a:s", "malformed"), ("a:s:fly", "unknown scopes"), ("a:s:send:team", "prefix")],
)
def test_bad_tokens_are_refused_without_echoing_the_secret(token: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        Settings(token=(token,))
    assert ":s:" not in str(info.value) and "s:" not in str(info.value).split("--token", 1)[1][:3]


def test_sender_response_and_tls_pairing() -> None:
    with pytest.raises(ConfigError, match="sender-response"):
        Settings(sender_response="early")
    with pytest.raises(ConfigError, match="go together"):
        Settings(ssl_certfile="cert.pem")
    with pytest.raises(ConfigError, match="ssl-only"):
        Settings(ssl_only=True)


def test_readme_documents_every_option() -> None:
    """Every `serve` flag and its variable are in the settings table of docs/configuration.md."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for option in options():
        assert f"| `{option.flag}`" in readme, option.flag
        assert f"`RINGPIPE_{option.name.upper()}`" in readme, option.name


# -- per-worker shares of server-wide limits --------------------------------------------------


@pytest.mark.parametrize(
    ("total", "workers", "share"),
    [
        (10_000, 1, 10_000),  # one worker: the flag itself, no slack
        (10_000, 2, 6_250),  # 10 000 / 2 × 1.25
        (20_000, 2, 12_500),
        (20, 2, 13),  # 12.5 rounds up
        (10_000, 3, 4_167),  # 4166.67 rounds up
        (1, 2, 1),  # never above the total
        (1, 64, 1),
        (7, 16, 1),
    ],
)
def test_worker_share_is_an_even_split_plus_a_quarter(total: int, workers: int, share: int) -> None:
    assert worker_share(total, workers) == share


def test_worker_share_invariants() -> None:
    """Every total splits: workers × share covers it, a share never exceeds it, and the
    server-wide overshoot is at most a quarter (plus rounding, one per worker)."""
    for total in (*range(1, 200), 9_999, 10_000, 20_000, 1_000_003):
        assert worker_share(total, 1) == total
        for workers in (2, 3, 4, 7, 16, 64):
            share = worker_share(total, workers)
            assert share * workers >= total
            assert share <= total
            assert share * workers <= total * 5 // 4 + workers


def test_shares_of_the_default_limits() -> None:
    """The defaults on 2 workers: 6 250 pipes and 12 500 connections a worker (10 000 token
    streams of two connections each need about 10 000 on each, all gathered on owners)."""
    s = Settings(workers=2)
    assert (s.max_pipes, s.max_connections) == (10_000, 20_000)
    assert (s.pipes_per_worker, s.connections_per_worker) == (6_250, 12_500)
    one = Settings(workers=1, max_pipes=20, max_connections=50)
    assert (one.pipes_per_worker, one.connections_per_worker) == (20, 50)


@pytest.mark.parametrize("workers", [2, 3, 4, 8])
def test_the_share_absorbs_how_unevenly_many_paths_hash(workers: int) -> None:
    """10 000 distinct paths (the swarm bench's and random ones) never put more on one owner
    than its share of --max-pipes 10 000: crc32 splits them within a few percent, the slack is 25 %."""
    share = Settings(workers=workers).pipes_per_worker
    for paths in (
        [f"/swarm-{i}" for i in range(10_000)],
        [f"/{i:032x}" for i in range(10_000)],
        [f"/tokens/run-{i * 7919}" for i in range(10_000)],
        ["/" + hashlib.sha256(b"%d" % i).hexdigest()[:32] for i in range(10_000)],  # like random names
    ):
        per_owner = [0] * workers
        for path in paths:
            per_owner[owner_of(path, workers)] += 1
        assert max(per_owner) <= share, (max(per_owner), share)
