"""Cloud SMS throughput: the ``aliyun`` and ``tencent`` gateways at their largest batches, each
beside the provider's official SDK client sending the same requests in the same run.

Each simulator runs in a process of its own (``python -m loadtests.sim_aliyun`` / ``sim_tencent``),
so this process's CPU is the client's alone. Pigeon sends ``--requests`` requests of the largest
batch each provider takes with one parameter set (Aliyun SendSms: 1,000 numbers; Tencent
SendSms: 200), ``--in-flight`` at once, on one event loop; the baseline is the official SDK —
Aliyun's async client (``send_sms_async``) on asyncio, Tencent's synchronous client (it has no
async one) in as many threads::

    python -m loadtests.cloud_blast --requests 200 --in-flight 4 --json loadtests/results-cloud-blast.json

Reported per provider and client: messages/s, requests/s, client CPU per request, and that every
message was accepted. Bounded: ``--requests`` requests per client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio

from engine.core.messages import MessageBatch, Outcome
from engine.core.provider_template import compile_provider_template
from engine.sending.gateway import GatewayContext
from loadtests._host import cpu_seconds, free_port

__all__ = ["main", "run"]

SIGN = "小鹅优选"
KEYS = {
    "aliyun": ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIsimKeyId", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "simSecret"),
    "tencent": ("TENCENTCLOUD_SECRET_ID", "AKIDsim", "TENCENTCLOUD_SECRET_KEY", "simKey"),
}
TEXTS = {
    "aliyun": ("SMS_1", "亲爱的${name}，您的${coupon}元券已到账，拒收请回复R"),
    "tencent": ("1234567", "{1}，您的{2}元券已到账，拒收请回复R"),
}
BATCH = {"aliyun": 1000, "tencent": 200}
"""The most numbers one request takes when they share their parameters (SendSms)."""
VALUES = ("张三", "20")


def _simulator(provider: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    _, key, _, secret = KEYS[provider]
    code, text = TEXTS[provider]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            f"loadtests.sim_{provider}",
            "--port",
            str(port),
            "--key",
            f"{key}={secret}",
            "--sign",
            SIGN,
            "--template",
            f"{code}={text}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the {provider} simulator did not start")


def _numbers(request: int, n: int) -> list[str]:
    return [f"138{request:04d}{i:04d}" for i in range(n)]


def _batch(provider: str, request: int) -> MessageBatch:
    code, text = TEXTS[provider]
    params = {"name": "name", "coupon": "coupon"} if provider == "aliyun" else {"1": "name", "2": "coupon"}
    template = compile_provider_template(provider=provider, code=code, text=text, params=params)
    n = BATCH[provider]
    rendered = (
        "【"
        + SIGN
        + "】"
        + text.replace("${name}", VALUES[0])
        .replace("${coupon}", VALUES[1])
        .replace("{1}", VALUES[0])
        .replace("{2}", VALUES[1])
    )
    return MessageBatch(
        "cm",
        rows=list(range(1, n + 1)),
        numbers=_numbers(request, n),
        texts=[rendered] * n,
        parts=[1] * n,
        id_prefix=f"r{request}-",
        params=[(template, VALUES)] * n,
    )


def _gateway(provider: str, port: int) -> Any:
    ctx = GatewayContext(name=provider, base_dir=Path("."), run_dir=Path("/tmp"))
    if provider == "aliyun":
        from plugins.gateway_aliyun.hooks import AliyunConfig, AliyunGateway

        return AliyunGateway(AliyunConfig(url=f"http://127.0.0.1:{port}"), ctx)
    from plugins.gateway_tencent.hooks import TencentConfig, TencentGateway

    return TencentGateway(TencentConfig(sdk_app_id="1400000001", url=f"http://127.0.0.1:{port}"), ctx)


async def _pigeon(provider: str, port: int, requests: int, in_flight: int) -> dict[str, Any]:
    gw = _gateway(provider, port)
    batches = [_batch(provider, r) for r in range(requests)]
    accepted = 0
    queue = list(reversed(batches))

    async def worker() -> None:
        nonlocal accepted
        while queue:
            results = await gw.send(queue.pop())
            accepted += sum(1 for r in results if r.outcome is Outcome.ACCEPTED)

    await gw.send(_batch(provider, requests))  # the first call goes alone (the gateway's probe)
    cpu, wall = cpu_seconds(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(worker)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    await gw.aclose()
    return _figures(requests, requests * BATCH[provider], accepted, wall, cpu)


def _figures(requests: int, messages: int, accepted: int, wall: float, cpu: float) -> dict[str, Any]:
    return {
        "requests": requests,
        "messages": messages,
        "accepted": accepted,
        "seconds": round(wall, 3),
        "messages_per_second": round(messages / wall),
        "requests_per_second": round(requests / wall, 1),
        "client_cpu_ms_per_request": round(cpu / requests * 1000, 3),
    }


def _aliyun_sdk(port: int, requests: int, in_flight: int) -> dict[str, Any]:
    from alibabacloud_dysmsapi20170525 import models
    from alibabacloud_dysmsapi20170525.client import Client
    from alibabacloud_tea_openapi import models as openapi

    _, key, _, secret = KEYS["aliyun"]
    client = Client(
        openapi.Config(
            access_key_id=key, access_key_secret=secret, endpoint=f"127.0.0.1:{port}", protocol="http"
        )
    )
    code, _ = TEXTS["aliyun"]
    param = json.dumps({"name": VALUES[0], "coupon": VALUES[1]}, ensure_ascii=False)

    async def main() -> int:
        sem = asyncio.Semaphore(in_flight)
        ok = 0

        async def one(r: int) -> None:
            nonlocal ok
            async with sem:
                req = models.SendSmsRequest(
                    phone_numbers=",".join(_numbers(r, BATCH["aliyun"])),
                    sign_name=SIGN,
                    template_code=code,
                    template_param=param,
                )
                resp = await client.send_sms_async(req)
                if resp.body.code == "OK":
                    ok += BATCH["aliyun"]

        await asyncio.gather(*(one(r) for r in range(requests)))
        return ok

    cpu, wall = cpu_seconds(), time.perf_counter()
    accepted = asyncio.run(main())
    return _figures(
        requests, requests * BATCH["aliyun"], accepted, time.perf_counter() - wall, cpu_seconds() - cpu
    )


def _tencent_sdk(port: int, requests: int, in_flight: int) -> dict[str, Any]:
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.sms.v20210111 import models, sms_client

    _, key, _, secret = KEYS["tencent"]
    profile = ClientProfile(
        httpProfile=HttpProfile(protocol="http", endpoint=f"127.0.0.1:{port}", keepAlive=True)
    )
    clients = [
        sms_client.SmsClient(credential.Credential(key, secret), "ap-guangzhou", profile)
        for _ in range(in_flight)
    ]
    code, _ = TEXTS["tencent"]

    def one(r: int) -> int:
        req = models.SendSmsRequest()
        req.SmsSdkAppId = "1400000001"
        req.SignName = SIGN
        req.TemplateId = code
        req.TemplateParamSet = list(VALUES)
        req.PhoneNumberSet = ["+86" + n for n in _numbers(r, BATCH["tencent"])]
        resp = clients[r % in_flight].SendSms(req)
        return sum(1 for s in resp.SendStatusSet if s.Code == "Ok")

    cpu, wall = cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        accepted = sum(pool.map(one, range(requests)))
    return _figures(
        requests, requests * BATCH["tencent"], accepted, time.perf_counter() - wall, cpu_seconds() - cpu
    )


def run(requests: int, in_flight: int) -> dict[str, Any]:
    """Both providers, Pigeon then the SDK against the same simulator; returns the figures."""
    out: dict[str, Any] = {"requests": requests, "in_flight": in_flight}
    for provider in ("aliyun", "tencent"):
        key_env, key, secret_env, secret = KEYS[provider]
        os.environ[key_env], os.environ[secret_env] = key, secret
        proc, port = _simulator(provider)
        try:
            pigeon = anyio.run(
                _pigeon,
                provider,
                port,
                requests,
                in_flight,
                backend="asyncio",
                backend_options={"use_uvloop": True},
            )
            sdk = (_aliyun_sdk if provider == "aliyun" else _tencent_sdk)(port, requests, in_flight)
        finally:
            proc.terminate()
            proc.wait(10)
        out[provider] = {
            "batch": BATCH[provider],
            "pigeon": pigeon,
            "sdk": sdk,
            "messages_per_second_ratio": round(pigeon["messages_per_second"] / sdk["messages_per_second"], 2),
            "cpu_per_request_ratio": round(
                pigeon["client_cpu_ms_per_request"] / sdk["client_cpu_ms_per_request"], 2
            ),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both providers and print (or write) the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--in-flight", type=int, default=4)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    figures = run(args.requests, args.in_flight)
    text = json.dumps(figures, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    ok = all(
        figures[pv][who]["accepted"] == figures[pv][who]["messages"]
        for pv in ("aliyun", "tencent")
        for who in ("pigeon", "sdk")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
