"""Everything a stranger can send, against a real uvicorn server on PostgreSQL.

One test per class of hostile input, each asserting the status code it now gets:

* data location in a spec (``data_dir``, paths in ``data_subdir``)      -> 422 naming the field
* NUL/control characters/lone surrogates in strings, over-long strings  -> 422 naming the field
* Infinity/NaN in any number, floats for integers, numbers past bounds  -> 422 naming the field
* devices no worker can take (``mps``, ``cuda:99999999999999999999``)  -> 422 (device)
* huge ``choices`` lists or choice strings                              -> 422 (choices)
* out-of-range path and query integers                                  -> 422
* bodies over the limit, declared or streamed, with or without a key    -> 413 before parsing
* state changes that are not JSON (cross-site forms, text/plain)       -> 415, study unchanged
* a non-ASCII API key                                                   -> 401
* ``/ready`` with the database down                                     -> 503 without addresses
* a database that refuses the data (DataError)                          -> 422, not logged as
  an outage; client text in log lines is escaped
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text

from service.app import create_app
from service.logtext import loggable
from service.settings import Settings
from service.spec import SPEC_EXAMPLES

pytestmark = pytest.mark.postgres

LIMIT_BYTES = 64 * 1024
KEY = "s3cret-key"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def base(
    postgres_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> Iterator[str]:
    settings = Settings(
        database_url=postgres_url, max_request_bytes=LIMIT_BYTES, reaper_interval_s=0
    )
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_base(
    postgres_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> Iterator[str]:
    settings = Settings(
        database_url=postgres_url, api_key=KEY, max_request_bytes=LIMIT_BYTES, reaper_interval_s=0
    )
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def http(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30, headers=JSON) as client:
        yield client


def _spec(unique_name: Callable[..., str], **overrides: Any) -> dict[str, Any]:
    return {**SPEC_EXAMPLES["bop"], "name": unique_name("hostile"), **overrides}


def _fields(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def _raw_request(base: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send raw bytes (a lying Content-Length, a chunked stream) and read the answer."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


# --- data location


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"data_dir": "/etc"}, "data_dir"),
        ({"download": True}, "download"),
        ({"data_subdir": "../cifar10"}, "data_subdir"),
        ({"data_subdir": "/abs/path"}, "data_subdir"),
        ({"data_subdir": "a/b"}, "data_subdir"),
        ({"data_subdir": ".."}, "data_subdir"),
        ({"data_subdir": "data\u0000x"}, "data_subdir"),
        ({"data_subdir": "x" * 65}, "data_subdir"),
    ],
)
def test_spec_cannot_point_a_worker_at_a_path(
    http: httpx.Client, unique_name: Callable[..., str], overrides: dict[str, Any], field: str
) -> None:
    assert field in _fields(http.post("/api/v1/studies", json=_spec(unique_name, **overrides)))


def test_data_subdir_that_is_one_folder_name_is_accepted(
    http: httpx.Client, unique_name: Callable[..., str]
) -> None:
    response = http.post("/api/v1/studies", json=_spec(unique_name, data_subdir="cifar-10.v2"))
    assert response.status_code == 201, response.text
    study = http.get(response.headers["Location"]).json()
    assert study["spec"]["data_subdir"] == "cifar-10.v2"


# --- strings


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"description": "nul\u0000byte"}, "description"),
        ({"owner": "line\nbreak"}, "owner"),
        ({"owner": "bell\u0007"}, "owner"),
        ({"owner": "c1\u0085control"}, "owner"),
        ({"owner": "x" * 129}, "owner"),
        ({"description": "x" * 2001}, "description"),
        ({"name": "UPPER"}, "name"),
        ({"name": "a" * 64}, "name"),
        (
            {"search_space": {"gamma_schedule": {"choices": ["constant\u0000"]}}},
            "search_space.gamma_schedule.choices.0",
        ),
    ],
)
def test_strings_are_bounded_and_free_of_control_characters(
    http: httpx.Client, unique_name: Callable[..., str], overrides: dict[str, Any], field: str
) -> None:
    fields = _fields(http.post("/api/v1/studies", json=_spec(unique_name, **overrides)))
    assert any(f == field or f.startswith(field) for f in fields), fields


def test_lone_surrogate_is_422(http: httpx.Client, unique_name: Callable[..., str]) -> None:
    body = f'{{"name": "{unique_name("sur")}", "optimizer": "bop", "owner": "a\\ud800b"}}'
    assert "owner" in _fields(http.post("/api/v1/studies", content=body.encode()))


def test_description_may_have_lines(http: httpx.Client, unique_name: Callable[..., str]) -> None:
    spec = _spec(unique_name, description="first line\n\tsecond line")
    assert http.post("/api/v1/studies", json=spec).status_code == 201


# --- numbers


@pytest.mark.parametrize(
    ("fragment", "field"),
    [
        ('"timeout_s": Infinity', "timeout_s"),
        ('"timeout_s": NaN', "timeout_s"),
        ('"timeout_s": -Infinity', "timeout_s"),
        (
            '"search_space": {"gamma": {"low": 0.001, "high": 0.1, "step": Infinity}}',
            "search_space.gamma.step",
        ),
        (
            '"search_space": {"gamma_schedule": {"kind": "linear", "end_value": Infinity}}',
            "search_space.gamma_schedule.end_value",
        ),
        ('"search_space": {"gamma": NaN}', "search_space.gamma"),
        (
            '"search_space": {"real_lr": {"choices": [0.1, Infinity]}}',
            "search_space.real_lr.choices",
        ),
    ],
)
def test_non_finite_numbers_are_422(
    http: httpx.Client, unique_name: Callable[..., str], fragment: str, field: str
) -> None:
    body = f'{{"name": "{unique_name("inf")}", "optimizer": "bop", {fragment}}}'
    fields = _fields(http.post("/api/v1/studies", content=body.encode()))
    assert any(f.startswith(field) for f in fields), fields


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"trials_per_gpu": 1e6}, "trials_per_gpu"),
        ({"trials_per_gpu": 1_000_000}, "trials_per_gpu"),
        ({"trials_per_gpu": True}, "trials_per_gpu"),
        ({"batch_size": 2**62}, "batch_size"),
        ({"epochs": "10"}, "epochs"),
        ({"max_retries": 10**9}, "max_retries"),
        ({"seed": 2**70}, "seed"),
        ({"seed": -1}, "seed"),
        ({"sampler": {"name": "tpe", "seed": 2**32}}, "sampler.seed"),
        ({"n_trials": 2**40}, "n_trials"),
        ({"max_train_samples": 2**62}, "max_train_samples"),
        ({"timeout_s": 1e300}, "timeout_s"),
        ({"pruner": {"name": "median", "n_warmup_steps": 2**63}}, "pruner.n_warmup_steps"),
        (
            {"search_space": {"gamma_schedule": {"kind": "staircase", "every_epochs": 2**40}}},
            "search_space.gamma_schedule.every_epochs",
        ),
    ],
)
def test_numbers_are_real_and_bounded(
    http: httpx.Client, unique_name: Callable[..., str], overrides: dict[str, Any], field: str
) -> None:
    assert field in _fields(http.post("/api/v1/studies", json=_spec(unique_name, **overrides)))


@pytest.mark.parametrize("device", ["mps", "cuda:99999999999999999999", "cuda:64", "tpu"])
def test_devices_no_worker_can_take_are_422(
    http: httpx.Client, unique_name: Callable[..., str], device: str
) -> None:
    assert "device" in _fields(
        http.post("/api/v1/studies", json=_spec(unique_name, device=device))
    )


def test_choices_are_capped(http: httpx.Client, unique_name: Callable[..., str]) -> None:
    many = {"search_space": {"real_lr": {"choices": [1e-3 + i * 1e-6 for i in range(257)]}}}
    assert "search_space.real_lr.choices" in _fields(
        http.post("/api/v1/studies", json=_spec(unique_name, **many))
    )
    long = {"search_space": {"gamma_schedule": {"choices": ["c" * 65]}}}
    fields = _fields(http.post("/api/v1/studies", json=_spec(unique_name, **long)))
    assert any(f.startswith("search_space.gamma_schedule.choices") for f in fields), fields


def test_openapi_shows_the_bounds(http: httpx.Client) -> None:
    props = http.get("/openapi.json").json()["components"]["schemas"]["StudySpec"]["properties"]
    assert (
        props["trials_per_gpu"]["maximum"] == 1024 and props["trials_per_gpu"]["type"] == "integer"
    )
    assert props["seed"]["maximum"] == 2**32 - 1
    assert props["device"]["maxLength"] == 8 and "mps" not in props["device"]["pattern"]
    assert props["owner"]["anyOf"][0]["maxLength"] == 128


# --- path and query integers


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/studies/2147483648",
        "/api/v1/studies/99999999999999999999999",
        "/api/v1/studies/0",
        "/api/v1/studies/-1",
        "/api/v1/studies/2147483648/trials",
        "/api/v1/studies/1/trials?skip=9223372036854775808",
        "/api/v1/studies?skip=9223372036854775808",
        "/api/v1/studies?skip=2147483648",
        "/api/v1/studies?limit=1001",
        "/api/v1/studies/2147483648/plots/params",
        "/api/v1/studies/1/plots/" + "k" * 40,
    ],
)
def test_out_of_range_integers_are_422(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 422, response.text


def test_largest_id_is_a_plain_404(http: httpx.Client) -> None:
    assert http.get("/api/v1/studies/2147483647").status_code == 404
    assert http.get("/api/v1/studies?skip=2147483647").status_code == 200


# --- body size


def _post_head(base: str, length: int | None, headers: str = "") -> bytes:
    host = urlsplit(base).netloc
    size = (
        f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    )
    return (
        f"POST /api/v1/studies HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{headers}{size}\r\n"
    ).encode()


def test_declared_large_body_is_413_before_it_is_sent(base: str) -> None:
    status, _ = _raw_request(base, _post_head(base, 35_000_000))
    assert status == 413


def test_streamed_large_body_is_413(base: str) -> None:
    chunk = b"x" * 16384
    body = b"".join(
        b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT_BYTES // len(chunk) + 2)
    )
    status, _ = _raw_request(base, _post_head(base, None), body)
    assert status == 413


def test_large_body_is_413_before_the_key_is_checked(keyed_base: str) -> None:
    status, _ = _raw_request(keyed_base, _post_head(keyed_base, 35_000_000))
    assert status == 413
    status, _ = _raw_request(
        keyed_base, _post_head(keyed_base, 35_000_000, f"X-API-Key: {KEY}\r\n")
    )
    assert status == 413


def test_body_within_the_limit_is_read(
    http: httpx.Client, unique_name: Callable[..., str]
) -> None:
    spec = _spec(unique_name, description="d" * 1500)
    assert http.post("/api/v1/studies", json=spec).status_code == 201


# --- cross-site state changes


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_state_changes_must_be_json(
    base: str, unique_name: Callable[..., str], content_type: str | None
) -> None:
    with (
        httpx.Client(base_url=base, timeout=30) as plain,
        httpx.Client(base_url=base, timeout=30, headers=JSON) as json_,
    ):
        created = json_.post("/api/v1/studies", json=_spec(unique_name)).json()
        headers = {"Content-Type": content_type} if content_type else {}
        stop = plain.post(
            f"/api/v1/studies/{created['id']}/stop",
            headers=headers,
            content=b"{}" if content_type else b"",
        )
        assert stop.status_code == 415, stop.text
        assert json_.get(f"/api/v1/studies/{created['id']}").json()["status"] == "queued"
        create = plain.post(
            "/api/v1/studies", headers=headers, content=b'{"name": "x", "optimizer": "bop"}'
        )
        assert create.status_code == 415
        assert json_.post(f"/api/v1/studies/{created['id']}/stop").json()["status"] == "stopped"


# --- API key


@pytest.mark.parametrize(
    "key", ["clé".encode(), b"\xff\xfe", "ключ".encode(), b"s3cret-key\xc3\xa9"]
)
def test_non_ascii_api_key_is_401(keyed_base: str, key: bytes) -> None:
    with httpx.Client(base_url=keyed_base, timeout=30) as client:
        response = client.get("/api/v1/studies", headers={"X-API-Key": key})
        assert response.status_code == 401
        malformed = {"X-API-Key": key, **JSON}
        assert client.post("/api/v1/studies", content=b"{", headers=malformed).status_code == 401
        assert client.get("/api/v1/studies", headers={"X-API-Key": KEY}).status_code == 200


# --- /ready and logs


def test_ready_says_what_is_wrong_without_addresses(
    live_server: Callable[..., AbstractContextManager[str]],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere?connect_timeout=2"
    with live_server(create_app(Settings(database_url=url, reaper_interval_s=0))) as down:
        response = httpx.get(f"{down}/ready", timeout=30)
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "unreachable" in detail
    assert "127.0.0.1" not in detail and str(port) not in detail and "postgres" not in detail


def test_database_refusing_data_is_422_and_not_an_outage(
    postgres_url: str,
    live_server: Callable[..., AbstractContextManager[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Spec validation keeps NUL bytes out, so a route that stores one on purpose stands in for
    any path by which a value the database refuses could still arrive."""
    app = create_app(Settings(database_url=postgres_url, reaper_interval_s=0))

    @app.get("/refused")
    def refused() -> None:
        with app.state.engine.connect() as connection:
            connection.execute(text("SELECT CAST(:value AS text)"), {"value": "nul\x00\nFORGED"})

    caplog.set_level(logging.INFO, logger="service.app")
    with live_server(app) as url:
        response = httpx.get(f"{url}/refused%0aFORGED-LINE", timeout=30)
        assert response.status_code == 404
        response = httpx.get(f"{url}/refused", timeout=30)
    assert response.status_code == 422, response.text
    assert "Retry-After" not in response.headers
    messages = [r.getMessage() for r in caplog.records if r.name == "service.app"]
    assert messages and not any("unavailable" in m for m in messages), messages
    assert all("\n" not in m for m in messages), messages


def test_loggable_escapes_line_breaks_and_bounds_length() -> None:
    assert loggable("a\nb\r\x00c\u2028d") == "a\\x0ab\\x0d\\x00c\\x2028d"
    assert len(loggable("x" * 10_000)) == 300


def test_body_that_is_not_utf8_is_422(http: httpx.Client) -> None:
    assert "<body>" in _fields(http.post("/api/v1/studies", content=b'{"name": "\xff\xfe"}'))


def test_delete_needs_no_content_type(base: str, unique_name: Callable[..., str]) -> None:
    """DELETE is never a cross-site simple request (browsers preflight it), so it stays plain."""
    with (
        httpx.Client(base_url=base, timeout=30, headers=JSON) as json_,
        httpx.Client(base_url=base, timeout=30) as plain,
    ):
        created = json_.post("/api/v1/studies", json=_spec(unique_name)).json()
        assert plain.delete(f"/api/v1/studies/{created['id']}").status_code == 200


def test_stored_spec_that_todays_rules_refuse_is_409(
    http: httpx.Client, postgres_url: str, unique_name: Callable[..., str]
) -> None:
    """A study stored by an older, laxer version (``device: mps`` was accepted) is reported,
    not a 500."""
    from sqlalchemy import create_engine

    created = http.post("/api/v1/studies", json=_spec(unique_name)).json()
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            row = connection.execute(
                text("SELECT spec FROM bnn_studies WHERE id = :id"), {"id": created["id"]}
            ).scalar_one()
            old = {**row, "device": "mps", "data_dir": "/srv/data"}
            connection.execute(
                text("UPDATE bnn_studies SET spec = :spec WHERE id = :id"),
                {"spec": json.dumps(old), "id": created["id"]},
            )
    finally:
        engine.dispose()
    response = http.get(f"/api/v1/studies/{created['id']}")
    assert response.status_code == 409, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["device"]
    assert http.get("/api/v1/studies").status_code == 200
