"""The ``http`` gateway's request/response shapes against the simulator speaking each provider's API.

Each shape is configured the way an operator would (TOML, validated by the plugin's config type),
sent batches on both event loops, and its results are checked against what the simulator
recorded: accepted numbers carry the simulator's provider ids, refused ones the provider's code
and the right outcome class, throttled ones go again.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.core.clock import SystemClock
from engine.core.config import convert_section
from engine.core.errors import ConfigError, GatewayAuthError
from engine.core.messages import MessageBatch, Outcome
from engine.run.blast import _send
from engine.run.plan import new_run_dir, prepare
from engine.sending.gateway import GatewayContext
from loadtests.simulator import SimConfig, SimulatorThread
from plugins.gateway_http.hooks import HttpConfig, HttpGateway
from plugins.gateway_http.shapes import CodeTable, ResponseReader, ResponseShape

pytestmark = pytest.mark.anyio

SHAPES = {
    "pigeon": ("", 100),
    "aliyun": (
        """
[request]
encoding = "form"
batch = "columns"
join = ","
to_format = "national"
fields = { to = "PhoneNumbers", id = "", text = "", carrier = "", parts = "" }
extra = { SignName = "小鹅优选", TemplateCode = "SMS_100001" }
[response]
results = ""
provider_id = "BizId"
status = ""
code = "Code"
codes = { "Throttling.*" = "throttled" }
""",
        20,
    ),
    "tencent": (
        """
[request]
batch = "columns"
fields = { to = "PhoneNumberSet", id = "", text = "", carrier = "", parts = "" }
extra = { SmsSdkAppId = "1400000000", TemplateId = "100001", SignName = "小鹅优选" }
[response]
results = "Response.SendStatusSet"
match = "to"
to = "PhoneNumber"
provider_id = "SerialNo"
status = ""
code = "Code"
""",
        50,
    ),
    "twilio": (
        """
[request]
encoding = "form"
batch = "single"
fields = { to = "To", text = "Body", id = "", carrier = "", parts = "" }
extra = { From = "+15005550006" }
[response]
ok_status = [201]
results = ""
provider_id = "sid"
status = "status"
statuses = { queued = "accepted", accepted = "accepted", failed = "rejected" }
code = "error_code"
error_code = "code"
""",
        1,
    ),
}


def _config(url: str, shape: str, max_batch: int, extra: str = "") -> HttpConfig:
    text = f'url = "{url}"\nmax_batch = {max_batch}\n{extra}\n' + SHAPES[shape][0]
    return convert_section(tomllib.loads(text), HttpConfig, file="engine.toml", path="gateways.p.options")


def _gateway(config: HttpConfig, tmp_path: Path) -> HttpGateway:
    return HttpGateway(config, GatewayContext(name="p", base_dir=tmp_path, run_dir=tmp_path))


def _batch(start: int, n: int) -> MessageBatch:
    rows = list(range(start, start + n))
    return MessageBatch(
        "cm",
        rows=rows,
        numbers=[f"1380013{r:04d}" for r in rows],
        texts=[f"【小鹅】第{r}条，回T退订" for r in rows],
        parts=[1] * n,
        id_prefix="s-",
    )


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_each_shape_reads_every_outcome_the_provider_words(
    anyio_backend: object, tmp_path: Path, shape: str
) -> None:
    max_batch = SHAPES[shape][1]
    sim_cfg = SimConfig(shape=shape, p_reject=0.02, p_throttle=0.02, seed=7)
    with SimulatorThread(sim_cfg) as sim:
        gw = _gateway(_config(f"http://127.0.0.1:{sim.port}/send", shape, max_batch), tmp_path)
        got: dict[str, list[tuple[str, str, str]]] = {"accepted": [], "rejected": [], "throttled": []}
        try:
            for start in range(0, 400, max_batch):
                batch = _batch(start, max_batch)
                for to, r in zip(batch.tos, await gw.send(batch), strict=True):
                    got[r.outcome.value].append((to, r.provider_id, r.code))
                    if r.outcome is Outcome.REJECTED:
                        assert r.permanent, r
        finally:
            await gw.aclose()
    accepted = sorted(to for to, _, _ in got["accepted"])
    assert accepted == sorted(m[2] if m[2].startswith("+") else "+86" + m[2] for m in sim.log)
    assert all(pid.startswith("sim-") for _, pid, _ in got["accepted"])
    if shape != "aliyun":  # one provider id per message
        assert len({pid for _, pid, _ in got["accepted"]}) == len(accepted)
    rejected = sorted(to for to, _, _ in got["rejected"])
    assert rejected == sorted(n if n.startswith("+") else "+86" + n for n in sim.rejected)
    assert got["rejected"] and got["throttled"], "the seed gives every outcome"
    codes = {"pigeon": "INVALID_NUMBER", "aliyun": "isv.MOBILE_NUMBER_ILLEGAL",
             "tencent": "InvalidParameterValue.IncorrectPhoneNumber", "twilio": "21211"}  # fmt: skip
    assert {code for _, _, code in got["rejected"]} == {codes[shape]}
    assert len(accepted) + len(rejected) + len(got["throttled"]) == 400


async def test_a_provider_refusing_the_account_fails_the_request_as_a_whole(
    anyio_backend: object, tmp_path: Path
) -> None:
    shape = SHAPES["aliyun"][0].replace(
        'codes = { "Throttling.*" = "throttled" }', 'codes = { "isv.MOBILE_NUMBER_ILLEGAL" = "account" }'
    )
    with SimulatorThread(SimConfig(shape="aliyun", p_reject=1.0)) as sim:
        text = f'url = "http://127.0.0.1:{sim.port}/send"\nmax_batch = 5\n' + shape
        config = convert_section(
            tomllib.loads(text), HttpConfig, file="engine.toml", path="gateways.p.options"
        )
        gw = _gateway(config, tmp_path)
        try:
            with pytest.raises(GatewayAuthError, match=r"isv\.MOBILE_NUMBER_ILLEGAL"):
                await gw.send(_batch(0, 5))
        finally:
            await gw.aclose()
    assert not sim.log


def test_codes_map_to_outcome_classes_by_exact_code_then_longest_prefix() -> None:
    table = CodeTable({"A.*": "retry", "A.B.*": "capped", "A.B.C": "rejected"}, "window")
    assert [table[c] for c in ("A.B.C", "A.B.D", "A.X", "Z")] == ["rejected", "capped", "retry", "window"]
    reader = ResponseReader(ResponseShape(), idempotent=False, gateway="p")
    assert reader.classify("retry", "throttled") == ("throttled", "throttled")
    assert reader.classify("rejected", "LimitExceeded.PhoneNumberDailyLimit")[0] == "capped"
    assert reader.classify("accepted", "whatever") == ("accepted", "whatever")
    unsure = reader.submit("ambiguous", "InternalError.Timeout", "")
    assert (unsure.outcome, unsure.code) == (Outcome.UNKNOWN, "ambiguous:InternalError.Timeout")
    idem = ResponseReader(ResponseShape(), idempotent=True, gateway="p")
    assert idem.submit("ambiguous", "InternalError.Timeout", "").outcome is Outcome.RETRY


@pytest.mark.parametrize(
    ("options", "where", "says"),
    [
        ('[request]\nencoding = "form"\n', "gateways.p.options.request", "form"),
        ('[request]\nbatch = "single"\n', "gateways.p.options", "max_batch = 1"),
        ('[request]\nfields = { to = "" }\n', "gateways.p.options.request", "fields.to"),
        ('[response]\nmatch = "id"\nid = ""\n', "gateways.p.options.response", "match"),
        (
            '[response]\ncodes = { X = "maybe" }\n',
            "gateways.p.options.response",
            "`codes.X` = 'maybe' is not an outcome class; expected one of: accepted",
        ),
        ('[response]\nresult = "x"\n', "gateways.p.options.response.result", "did you mean `results`"),
    ],
)
def test_a_bad_shape_is_refused_at_load_naming_the_key(options: str, where: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        convert_section(
            tomllib.loads('url = "http://127.0.0.1:9/send"\n' + options),
            HttpConfig,
            file="engine.toml",
            path="gateways.p.options",
        )
    assert err.value.path == where
    assert says in err.value.problem


async def test_a_blast_through_a_shaped_gateway_ends_every_recipient_in_one_state(
    anyio_backend: object,
    tmp_path: Path,
    write: Callable[[str, str | bytes], Path],
    campaign_file: Callable[..., Path],
) -> None:
    rows = 120
    write("seg.csv", "phone,name,coupon\n" + "".join(f"1380013{i:04d},客{i},20\n" for i in range(rows)))
    campaign = campaign_file("seg.csv")
    shape = SHAPES["tencent"][0].replace("[request]", "[gateways.p.options.request]")
    shape = shape.replace("[response]", "[gateways.p.options.response]")
    with SimulatorThread(SimConfig(shape="tencent", p_reject=0.05, p_throttle=0.1, seed=3)) as sim:
        (tmp_path / "engine.toml").write_text(
            f"""
[retry]
max_attempts = 8
base = 0.01
cap = 0.02
[gateways.p]
plugin = "http"
[gateways.p.options]
url = "http://127.0.0.1:{sim.port}/send"
max_batch = 25
{shape}
""",
            encoding="utf-8",
        )
        plan = prepare(campaign)
        summary = await _send(plan, new_run_dir(plan, tmp_path / "runs"), None, SystemClock())
    sent, failed = summary.states.get("sent", 0), summary.states.get("failed", 0)
    assert sent + failed == rows and sent == len(sim.log) == len({m[2] for m in sim.log})
    assert failed == len(sim.rejected)
    assert summary.reasons["failed"] == {"rejected:InvalidParameterValue.IncorrectPhoneNumber": failed}
    assert sim.stats["throttled"] > 0 and summary.gateways["p"].retries > 0
