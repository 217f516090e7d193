"""A whole campaign with per-recipient template parameters through ``pigeon send`` into the Aliyun
and Tencent simulators: every message arrives once, with exactly the text the pipeline renders
(the text ``pigeon preview`` shows).

    python -m loadtests.cloud_campaign --rows 100000 --json loadtests/results-cloud-campaign.json

The segment has a unique number per row and names and coupons that repeat every 7 and 3 rows (21
parameter sets: both providers group equal ones into one SendSms). Reported per provider: rows,
seconds, messages/s, texts that differ from the rendered ones, numbers that arrived twice or not
at all, and the number of provider requests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from engine.run.plan import prepare
from engine.run.preview import preview
from loadtests.sim_aliyun import AliyunSim, AliyunSimConfig
from loadtests.sim_cloud import SimThread
from loadtests.sim_tencent import TencentSim, TencentSimConfig

__all__ = ["main", "run"]

ALIYUN = (
    "SMS_1",
    "亲爱的${name}，您的${coupon}元券已到账，拒收请回复R",
    '{ name = "name", coupon = "coupon" }',
)
TENCENT = ("1234567", "{1}，您的{2}元券已到账，拒收请回复R", '{ 1 = "name", 2 = "coupon" }')
ENV = {
    **os.environ,
    "PYTHONUTF8": "1",
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIsimKeyId",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "simSecret",
    "TENCENTCLOUD_SECRET_ID": "AKIDsim",
    "TENCENTCLOUD_SECRET_KEY": "simKey",
}


def _files(tmp: Path, provider: str, port: int, rows: int) -> Path:
    (tmp / "seg.csv").write_text(
        "phone,name,coupon\n" + "".join(f"13{8 + i % 2}{i:08d},客{i % 7},{5 + i % 3}\n" for i in range(rows)),
        encoding="utf-8",
    )
    code, text, params = ALIYUN if provider == "aliyun" else TENCENT
    extra = 'sdk_app_id = "1400000001"\n' if provider == "tencent" else ""
    (tmp / "engine.toml").write_text(
        f"""[store]
path = "pigeon.db"
[gateways.cloud]
plugin = "{provider}"
in_flight = 8
[gateways.cloud.options]
url = "http://127.0.0.1:{port}"
{extra}""",
        encoding="utf-8",
    )
    campaign = tmp / "campaign.toml"
    campaign.write_text(
        f"""id = "cloud"
engine = "engine.toml"
[segment]
source = "csv"
path = "seg.csv"
[template]
signature = "小鹅优选"
[template.provider]
provider = "{provider}"
code = "{code}"
text = "{text}"
params = {params}
[policy]
send_window = ""
""",
        encoding="utf-8",
    )
    return campaign


def _rendered(campaign: Path) -> tuple[dict[str, str], list[str]]:
    """Number → text as the pipeline renders them, and the texts ``pigeon preview`` shows."""
    plan = prepare(campaign)
    out: dict[str, str] = {}
    segment = plan.open_segment()
    try:
        for b in segment.batches(4096):
            out.update(zip(b.numbers, b.texts, strict=True))
    finally:
        segment.close()
    return out, [s.text for s in preview(plan, samples=5, max_rows=1000).samples]


def _one(provider: str, rows: int, backend: str) -> dict[str, Any]:
    code, text, _ = ALIYUN if provider == "aliyun" else TENCENT
    sim: Any = (
        AliyunSim(AliyunSimConfig(templates={code: text}))
        if provider == "aliyun"
        else TencentSim(TencentSimConfig(templates={code: text}))
    )
    with TemporaryDirectory() as d, SimThread(sim):
        tmp = Path(d)
        campaign = _files(tmp, provider, sim.port, rows)
        want, shown = _rendered(campaign)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "engine", "send", str(campaign), "--json", "-q", "--backend", backend],
            cwd=tmp,
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
        )
        seconds = time.perf_counter() - started
        arrived: dict[str, str] = {}
        twice = 0
        for number, got in sim.sent:
            n = number[3:] if number.startswith("+86") else number
            twice += n in arrived
            arrived[n] = got
        summary = json.loads(done.stdout) if done.stdout else {}
    return {
        "provider": provider,
        "backend": backend,
        "rows": rows,
        "exit": done.returncode,
        "sent": summary.get("states", {}).get("sent", 0),
        "seconds": round(seconds, 2),
        "messages_per_second": round(len(arrived) / seconds) if seconds else 0,
        "provider_requests": int(sim.stats.get("requests", 0)),
        "texts_differing": sum(1 for n, t in arrived.items() if want.get(n) != t),
        "missing": len(set(want) - set(arrived)),
        "twice": twice,
        "preview_samples_found": all(s in want.values() for s in shown),
    }


def run(rows: int, backend: str) -> dict[str, Any]:
    """Both providers; returns the figures."""
    return {p: _one(p, rows, backend) for p in ("aliyun", "tencent")}


def main(argv: list[str] | None = None) -> int:
    """Run both providers and print (or write) the figures; non-zero when a text differs or a
    message is missing or twice."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    figures = run(args.rows, args.backend)
    text = json.dumps(figures, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    bad = any(
        f["exit"] or f["texts_differing"] or f["missing"] or f["twice"] or not f["preview_samples_found"]
        for f in figures.values()
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
