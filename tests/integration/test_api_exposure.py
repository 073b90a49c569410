"""What a response gives away: secrets are not cacheable, JSON is not sniffable, error messages
do not repeat unbounded input, and no redirect is built from the Host header."""

from __future__ import annotations

import uuid

from tests.integration.api_support import ADMIN, Api, api_fixture  # noqa: F401


async def test_the_new_api_key_is_not_cacheable(api: Api) -> None:
    r = await api.client.post(
        "/v1/admin/users", json={"email": "secret@example.com"}, headers=ADMIN
    )
    assert r.status_code == 201
    assert r.json()["api_key"]
    assert r.headers["cache-control"] == "no-store"


async def test_json_responses_are_nosniff(api: Api) -> None:
    user = await api.user(credits=5)
    answers = [
        await api.client.get("/healthz"),
        await api.client.get("/v1/credits", headers=user.headers),
        await api.client.get("/v1/credits"),  # 401
        await api.client.get("/v1/nothing-here"),  # 404
        await api.client.delete("/v1/credits", headers=user.headers),  # 405
        await api.client.post("/v1/admin/users", json={"email": "n@example.com"}, headers=ADMIN),
    ]
    for r in answers:
        assert r.headers["content-type"].startswith("application/json"), r
        assert r.headers.get_list("x-content-type-options") == ["nosniff"], r


async def test_not_found_messages_do_not_repeat_unbounded_input(api: Api) -> None:
    user = await api.user()
    long = "z" * 5000
    for path, code in [
        (f"/v1/jobs/{long}", "job_not_found"),
        (f"/v1/jobs/{long}/cancel", "job_not_found"),
        (f"/v1/assets/{long}", "asset_not_found"),
        (f"/v1/admin/users/{long}/credits", "user_not_found"),
        (f"/v1/{long}", "not_found"),
    ]:
        method = "POST" if path.endswith(("cancel", "credits")) else "GET"
        headers = ADMIN if "admin" in path else user.headers
        r = await api.client.request(method, path, headers=headers, json={"amount": 1})
        assert r.status_code == 404, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == code
        assert len(error["message"]) < 150, error["message"]
        assert "z" * 90 in error["message"]  # quoted, but cut
        assert "z" * 101 not in error["message"]

    # A short id is still quoted whole.
    missing = uuid.uuid4()
    r = await api.client.get(f"/v1/jobs/{missing}", headers=user.headers)
    assert r.json()["error"]["message"] == f"no job {missing}"


async def test_a_trailing_slash_is_not_redirected_to_the_host_header(api: Api) -> None:
    user = await api.user()
    for method, path in [("GET", "/v1/jobs/"), ("GET", "/v1/credits/"), ("POST", "/v1/jobs/")]:
        r = await api.client.request(
            method, path, headers={**user.headers, "Host": "evil.example"}
        )
        assert r.status_code == 404, (path, r.status_code, r.headers)
        assert "location" not in r.headers
        assert r.json()["error"]["code"] == "not_found"
    # The exact path still works.
    assert (await api.client.get("/v1/jobs", headers=user.headers)).status_code == 200
