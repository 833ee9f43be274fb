from __future__ import annotations

import httpx


async def test_daily_prices_from_the_simulator(client: httpx.AsyncClient) -> None:
    response = await client.get("/stock/ibm", params={"days": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["symbol"] == "IBM"
    assert body["source"] == "upstream"
    assert len(body["prices"]) == 5
