"""ForecastService through the REST gateway in front of the real services: a run on demand, then the
latest forecast, the list and the accuracy as JSON; bad input is a 4xx with the AIP-193 body."""

from __future__ import annotations

from tests.support.gateway import SITE, Client, error_of, reason_of


async def test_run_then_read_a_forecast_over_rest(client: Client) -> None:
    async with client() as c:
        # The gateway's site has no PV description: PV is refused with the precondition named.
        refused = await c.post(f"/v1/{SITE}:runForecast", json={"requestId": "rest-pv"})
        assert refused.status_code == 400, refused.text
        error = error_of(refused)
        assert error["status"] == "FAILED_PRECONDITION" and reason_of(error) == "STATE_CONFLICT"

        too_far = await c.post(
            f"/v1/{SITE}:runForecast",
            json={"requestId": "rest-far", "kinds": ["FORECAST_KIND_SITE_LOAD"], "horizon": "259201s"},
        )
        assert too_far.status_code == 400 and reason_of(error_of(too_far)) == "FIELD_INVALID"

        # Nor a country (provisioned sites start without one): load is forecast without holidays and
        # says so, rather than refused.
        no_country = await c.post(
            f"/v1/{SITE}:runForecast", json={"requestId": "rest-nc", "kinds": ["FORECAST_KIND_SITE_LOAD"]}
        )
        assert no_country.status_code == 200, no_country.text
        assert any("country" in reason for reason in no_country.json()["degradedReasons"]), no_country.text
        patched = await c.patch(f"/v1/{SITE}", params={"updateMask": "countryCode"}, json={"countryCode": "ES"})
        assert patched.status_code == 200, patched.text

        body = {"requestId": "rest-load", "kinds": ["FORECAST_KIND_SITE_LOAD"], "horizon": "3600s"}
        run = await c.post(f"/v1/{SITE}:runForecast", json=body)
        assert run.status_code == 200, run.text
        assert run.json()["state"] == "FORECAST_RUN_STATE_SUCCEEDED"
        again = await c.post(f"/v1/{SITE}:runForecast", json=body)
        assert again.json()["name"] == run.json()["name"]

        latest = await c.get(f"/v1/{SITE}:latestForecast", params={"kind": "FORECAST_KIND_SITE_LOAD"})
        assert latest.status_code == 200, latest.text
        slots = latest.json()["slots"]
        assert len(slots) == 4
        assert all(s["p10W"] <= s["p50W"] <= s["p90W"] for s in slots)

        listed = await c.get(f"/v1/{SITE}/forecasts", params={"view": "FORECAST_VIEW_FULL", "pageSize": "1"})
        assert listed.status_code == 200, listed.text
        assert listed.json()["forecasts"][0]["run"] == run.json()["name"]

        accuracy = await c.get(f"/v1/{SITE}:forecastAccuracy", params={"kind": "FORECAST_KIND_SITE_LOAD"})
        assert accuracy.status_code == 200 and accuracy.json()["site"] == SITE

        missing_kind = await c.get(f"/v1/{SITE}:latestForecast")
        assert missing_kind.status_code == 400 and reason_of(error_of(missing_kind)) == "FIELD_INVALID"
