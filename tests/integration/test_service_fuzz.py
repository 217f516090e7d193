"""Fuzz ``pigeon serve`` from its own OpenAPI document (Schemathesis): no 5xx, and the answers agree with it.

The service runs as ``pigeon serve`` in a process of its own, on each event loop, with a gateway
simulator behind it. For every operation of ``/openapi.json`` Schemathesis generates requests
that fit the schema (positive) and requests that break it (negative); every answer must pass
Schemathesis's checks: not a server error, a documented status code, content type, headers and
body schema, schema-breaking data refused with a 4xx, no access without the key. Webhooks are
fuzzed twice: unsigned (the signature header fuzzed) and signed by the test (so the bodies reach
the parsers). Some positive requests are steered to what the service has (valid numbers, its
templates, its gateway, a campaign file) so they get past "not found" into the code behind it.

Bounded for CI: ``PIGEON_FUZZ_EXAMPLES`` examples per operation, mode and variant (default 20:
about 700 requests per event loop, a few seconds each). Set it higher for a longer hunt
(``PIGEON_FUZZ_EXAMPLES=400`` is over 10,000 requests per loop); ``PIGEON_FUZZ_SEED`` repeats a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import schemathesis.specs.openapi.checks as openapi_checks
from hypothesis import HealthCheck, Phase, given, seed, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from engine.sending.webhooks import sign
from engine.service.openapi import build
from loadtests.simulator import Simulator
from tests.integration.service_harness import SECRET, write_campaign, write_engine

EXAMPLES = int(os.environ.get("PIGEON_FUZZ_EXAMPLES", "20"))
SEED = int(os.environ.get("PIGEON_FUZZ_SEED", str(random.randrange(2**32))))

CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.ignored_auth,
    openapi_checks.missing_required_header,
]

NUMBERS = ["13800138000", "+86 139-0013-9000", "8613700137000", "+447911123456", "15012345678"]
MESSAGES = [
    {"text": "您的验证码是 4321"},
    {"template": "code", "fields": {"code": "8888"}},
    {"template": "order_shipped", "fields": {"order": "A1", "tracking": "SF1"}},
]


class _Signed(requests.auth.AuthBase):
    """Signs the body as it is sent (``X-Pigeon-Signature``), so the webhook's parser reads it."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        data = body.encode() if isinstance(body, str) else body
        r.headers["X-Pigeon-Signature"] = sign(SECRET.encode(), data, int(time.time()))
        return r


def _steered(path: str) -> Callable[[Any, Any], Any] | None:
    """For a positive case of ``path``: a function (case, Hypothesis's draw) putting in what the
    service has, in some of the cases."""
    if path == "/v1/messages":

        def messages(case: Any, draw: Any) -> Any:
            if isinstance(case.body, dict) and draw(st.booleans()):
                case.body["messages"] = [
                    {"to": draw(st.sampled_from(NUMBERS)), **draw(st.sampled_from(MESSAGES))}
                    for _ in case.body.get("messages", [None])
                ][:3]
                if case.headers and "Idempotency-Key" in case.headers:  # a fresh one: not "reused"
                    case.headers["Idempotency-Key"] = draw(st.uuids()).hex
            return case

        return messages
    if path == "/v1/campaigns":

        def campaigns(case: Any, draw: Any) -> Any:
            if isinstance(case.body, dict) and draw(st.integers(0, 7)) == 0:
                case.body["file"] = "tiny.toml"
            return case

        return campaigns
    if path.startswith("/v1/campaigns/{id}") or path == "/v1/messages/{id}":

        def ids(case: Any, draw: Any) -> Any:
            if draw(st.booleans()):
                case.path_parameters["id"] = draw(st.sampled_from(["tiny", "api-transactional-1"]))
            return case

        return ids
    return None


@st.composite
def _with(draw: Any, strategy: Any, steer: Callable[[Any, Any], Any]) -> Any:
    return steer(draw(strategy), draw)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_openapi_fuzzer_finds_no_5xx_and_no_disagreement(
    backend: str, tmp_path: Path, simulator: Simulator
) -> None:
    engine, key = write_engine(tmp_path, simulator.port)
    write_campaign(tmp_path, 10, "tiny")
    env = {**os.environ, "PIGEON_TEST_WEBHOOK_SECRET": SECRET}
    log = tmp_path / "serve.log"  # a file, not a pipe: a pipe nobody reads would stop the service
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                "serve",
                "--engine",
                str(engine),
                "--port",
                "0",
                "--backend",
                backend,
            ],
            stderr=stderr,
            env=env,
            cwd=tmp_path,
        )
    try:
        port = _listening(log, proc)
        seen, failures = _fuzz(f"http://127.0.0.1:{port}", key)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    rest = log.read_text(encoding="utf-8")
    assert not failures, f"seed {SEED}:\n\n" + "\n\n".join(failures)
    statuses = Counter(status for (_, status) in seen.elements())
    print(
        f"fuzzed pigeon serve ({backend}, seed {SEED}): {sum(statuses.values())} requests, {dict(statuses)}"
    )
    assert sum(statuses.values()) >= 10 * EXAMPLES, statuses  # it did send requests
    assert not any(s >= 500 for s in statuses), statuses
    # the steering reached the code behind "not found": accepted messages, parsed callbacks
    assert seen[("POST /v1/messages", 202)] and seen[("POST /v1/webhooks/{gateway}/reports", 200)], seen
    assert code == 0, rest
    errors = [line for line in rest.splitlines() if '"level":"error"' in line]
    assert not errors, errors  # no unexpected exception was logged either


def _listening(log: Path, proc: subprocess.Popen[bytes]) -> int:
    """The service's port, from its ``service.listening`` log line."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event.get("event") == "service.listening":
                return int(event["port"])
        time.sleep(0.05)  # (waiting for another process to start: nothing to wait on but its file)
    raise AssertionError(f"the service did not start: {log.read_text(encoding='utf-8')}")


def _fuzz(url: str, key: str) -> tuple[Counter[tuple[str, int]], list[str]]:
    # 413: a body or a list over the service's limits is refused too (max_body_bytes, max_messages)
    rejected = ["400", "401", "404", "405", "409", "413", "415", "422"]
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": rejected}}}
    )
    schema = schemathesis.openapi.from_dict(build(), config=config)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}
    seen: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        has_input = bool(op.path_parameters or op.body or op.headers or op.query)
        modes = [GenerationMode.POSITIVE, *([GenerationMode.NEGATIVE] if has_input else [])]
        webhook = op.path.startswith("/v1/webhooks/")
        for mode in modes:
            for auth in (None, _Signed()) if webhook else (None,):
                fixed = {"gateway": "sim"} if webhook and auth is not None else None
                strategy = op.as_strategy(generation_mode=mode, path_parameters=fixed)
                steer = _steered(op.path) if mode is GenerationMode.POSITIVE else None
                if steer is not None:
                    strategy = _with(strategy, steer)

                try:
                    _run(strategy, op.label, auth, url, headers, session, seen)
                except (Exception, BaseExceptionGroup) as exc:  # (Schemathesis's FailureGroup)
                    failures.append(f"{op.label} ({mode.value}, {'signed' if auth else 'unsigned'}): {exc}")
    return seen, failures


def _run(
    strategy: Any,
    label: str,
    auth: requests.auth.AuthBase | None,
    url: str,
    headers: dict[str, str],
    session: requests.Session,
    seen: Counter[tuple[str, int]],
) -> None:
    """``EXAMPLES`` cases of ``strategy`` sent and checked (raises on the first failure, shrunk)."""

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        if case.query:  # requests leaves out a parameter whose value is None or []: send it empty
            # instead, or a case breaking the schema only by it arrives as a valid request
            case.query = {k: "" if v is None or v == [] else v for k, v in case.query.items()}
        response = case.call(base_url=url, headers=headers, session=session, auth=auth, timeout=30)
        seen[(label, response.status_code)] += 1
        case.validate_response(
            response,
            checks=CHECKS,
            headers=headers,
            transport_kwargs={"base_url": url, "headers": headers, "timeout": 30},
        )

    run()
