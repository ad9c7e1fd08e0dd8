"""``http/lean.py`` and ``http/cycle.py`` mirror three of uvicorn's classes in slots: they
must set every attribute uvicorn's own constructors set, or a uvicorn method we do not
override would meet a missing slot. pyproject pins uvicorn to the minor release this was
checked against; this test is what tells, on a new release, whether the mirror still covers it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from ringpipe.http.cycle import Cycle, Flow
from ringpipe.http.lean import _WORKER_WIDE, LeanHttpToolsProtocol


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """Never called: the protocols are only constructed."""


def _slots(cls: type) -> set[str]:
    return {name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())}


class _Transport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def test_the_lean_protocol_covers_every_attribute_uvicorns_constructor_sets() -> None:
    async def made() -> set[str]:
        config = Config(app=_app)
        config.load()
        return set(vars(HttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())))

    uvicorns = asyncio.run(made())
    covered = _slots(LeanHttpToolsProtocol) | set(_WORKER_WIDE)
    assert uvicorns - covered == set(), "uvicorn's HttpToolsProtocol sets attributes lean.py does not mirror"


def test_the_lean_cycle_and_flow_cover_every_attribute_uvicorns_constructors_set() -> None:
    transport = _Transport()
    flow = FlowControl(transport)
    assert set(vars(flow)) - _slots(Flow) == set(), "uvicorn's FlowControl sets attributes cycle.Flow does not mirror"

    async def made() -> set[str]:
        cycle = RequestResponseCycle(
            scope={"type": "http"},  # type: ignore[typeddict-item]
            transport=transport,
            flow=flow,
            logger=None,  # type: ignore[arg-type]
            access_logger=None,  # type: ignore[arg-type]
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
        return set(vars(cycle))

    missing = asyncio.run(made()) - _slots(Cycle)
    assert missing == set(), "uvicorn's RequestResponseCycle sets attributes cycle.Cycle does not mirror"
