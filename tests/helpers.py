"""How the tests talk to the service and to the simulator over HTTP, written once.

Plain functions and classes over an `httpx.AsyncClient`: the same ones serve the in-process
tests (the app and the simulator behind `httpx.ASGITransport`, tests/conftest.py) and the
real-socket ones (uvicorn subprocesses on 127.0.0.1, tests/servers.py).
"""

from __future__ import annotations

import httpx

from app.simulator import FaultMode

# -- the simulator ---------------------------------------------------------------------------


class SimulatorControl:
    """Switches the simulator's faults and reads its call counters, through its own endpoints
    (`/_faults`, `/_stats`): `client` points at the simulator, over a socket or in-process."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def set_fault(
        self, mode: FaultMode, delay_seconds: float | None = None, function: str | None = None
    ) -> None:
        """Fail every /query call as `mode` says (only `function`'s calls, when named); without
        `delay_seconds`, the simulator's default delay (2 s) for `slow`."""
        payload: dict[str, object] = {"mode": mode.value}
        if delay_seconds is not None:
            payload["delay_seconds"] = delay_seconds
        if function is not None:
            payload["function"] = function
        response = await self._client.post("/_faults", json=payload)
        assert response.status_code == 200, response.text

    async def reset_stats(self) -> None:
        response = await self._client.post("/_stats/reset")
        assert response.status_code == 200, response.text

    async def calls(self) -> dict[str, int]:
        """The /query calls received since the last reset, by function."""
        calls: dict[str, int] = (await self._stats()).json()["calls"]
        return calls

    async def total_calls(self) -> int:
        """The /query calls received since the last reset, all functions together."""
        total = (await self._stats()).json()["total"]
        assert isinstance(total, int)
        return total

    async def _stats(self) -> httpx.Response:
        response = await self._client.get("/_stats")
        assert response.status_code == 200, response.text
        return response
