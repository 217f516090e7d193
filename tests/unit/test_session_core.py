"""The sans-IO session core: framing, window, sequence numbers, backoff and the session's states."""

from __future__ import annotations

import random

import pytest

from plugins.gateway_smpp import codec as c
from plugins.gateway_smpp.wire import SmppDialect
from plugins.session_core.backoff import Backoff
from plugins.session_core.framing import Framer, FramingError
from plugins.session_core.session import (
    Answered,
    BindFailed,
    Bound,
    Closed,
    Dropped,
    Expired,
    Received,
    Session,
    SessionSettings,
    State,
)
from plugins.session_core.window import SequenceNumbers, Window


def test_framer_cuts_pdus_across_reads_and_keeps_the_tail() -> None:
    a = c.HEADER.pack(16, c.ENQUIRE_LINK, 0, 1)
    b = c.HEADER.pack(20, c.SUBMIT_SM, 0, 2) + b"abcd"
    f = Framer(16, 1000)
    data = a + b
    assert f.feed(data[:10]) == []
    assert f.feed(data[10:25]) == [a]
    assert f.buffered == 9
    assert f.feed(data[25:]) == [b]
    assert f.buffered == 0


@pytest.mark.parametrize("length", [3, 15, 1001])
def test_framer_refuses_impossible_lengths(length: int) -> None:
    with pytest.raises(FramingError):
        Framer(16, 1000).feed(length.to_bytes(4, "big") + b"\x00" * 20)


def test_window_bounds_expires_in_order_and_drains() -> None:
    w = Window(2)
    w.add(1, 10.0, "a")
    w.add(2, 11.0, "b", 5)
    assert w.room == 0
    with pytest.raises(ValueError, match="in flight"):
        w.add(2, 12.0, "c")
    assert w.next_deadline() == 10.0
    assert w.expired(10.5) == [(1, "a", 0)]
    assert w.room == 1
    assert w.pop(2) == (11.0, "b", 5)
    assert w.pop(2) is None
    w.add(3, 1.0, "d")
    assert w.drain() == [(3, "d", 0)]
    assert len(w) == 0


def test_sequence_numbers_wrap_within_the_protocol_range() -> None:
    s = SequenceNumbers(1, 3)
    assert [s.next() for _ in range(5)] == [1, 2, 3, 1, 2]


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    b = Backoff(0.5, 4.0)
    rng = random.Random(1)
    assert b.delay(1, rng) == 0.0
    delays = [b.delay(n, rng) for n in range(2, 12)]
    assert all(0.5 <= d <= 4.0 for d in delays)
    assert max(delays) > 2.0


def _session(**kw: float) -> Session:
    settings = SessionSettings(
        window=int(kw.pop("window", 2)),
        response_timeout=kw.pop("response_timeout", 5.0),
        bind_timeout=kw.pop("bind_timeout", 3.0),
        keepalive_interval=kw.pop("keepalive_interval", 10.0),
        keepalive_timeout=kw.pop("keepalive_timeout", 2.0),
        keepalive_tries=int(kw.pop("keepalive_tries", 3)),
    )
    bind = c.Bind(seq=0, system_id="sys", password="pw")
    return Session(SmppDialect(bind), settings)


def _bound(s: Session, now: float = 0.0) -> None:
    s.start(now, 0.0)
    req = c.decode(s.output())
    assert isinstance(req, c.Bind)
    assert (req.system_id, req.password) == ("sys", "pw")
    events = s.receive(c.encode(c.BindResp(command=c.BIND_TRANSCEIVER | c.RESP, seq=req.seq)), now)
    assert events == [Bound()]
    assert s.state is State.BOUND


def test_bind_refused_and_bind_timeout() -> None:
    s = _session()
    s.start(0.0, 0.0)
    seq = c.decode(s.output()).seq  # type: ignore[union-attr]
    resp = c.BindResp(command=c.BIND_TRANSCEIVER | c.RESP, seq=seq, status=c.ESME_RINVPASWD)
    assert s.receive(c.encode(resp), 1.0) == [BindFailed(c.ESME_RINVPASWD)]
    assert s.state is State.CLOSED
    s = _session()
    s.start(0.0, 0.0)
    assert s.tick(2.9) == []
    assert s.tick(3.0) == [BindFailed(-1)]


def test_requests_are_bounded_by_the_window_answered_or_expired() -> None:
    s = _session(window=2, response_timeout=5.0)
    _bound(s)
    for token in ("a", "b"):
        seq = s.next_seq()
        s.request(seq, c.HEADER.pack(16, c.SUBMIT_SM, 0, seq), token, 7, 1.0)
    with pytest.raises(RuntimeError, match="full"):
        s.request(s.next_seq(), b"", "c", 0, 1.0)
    sent = [c.HEADER.unpack_from(p)[3] for p in Framer(16, 9999).feed(s.output())]
    answer = c.encode(c.MessageResp(command=c.SUBMIT_SM | c.RESP, seq=sent[0], message_id="X1"))
    (ev,) = s.receive(answer, 2.0)
    assert isinstance(ev, Answered)
    assert (ev.token, ev.tag, ev.latency) == ("a", 7, pytest.approx(1.0))
    assert s.window.room == 1
    assert s.tick(5.9) == []
    assert s.tick(6.0) == [Expired("b", 7)]
    # a late answer to a request given up on is ignored
    late = c.encode(c.MessageResp(command=c.SUBMIT_SM | c.RESP, seq=sent[1], message_id="X2"))
    assert s.receive(late, 7.0) == []


def test_keepalive_when_idle_resent_and_the_link_declared_dead_after_n_tries() -> None:
    s = _session(keepalive_interval=10.0, keepalive_timeout=2.0, keepalive_tries=3)
    _bound(s, 0.0)
    assert s.tick(9.9) == [] and not s.has_output
    s.tick(10.0)
    first = c.decode(s.output())
    assert isinstance(first, c.Header) and first.command == c.ENQUIRE_LINK
    s.tick(12.0)  # unanswered: sent again
    assert c.decode(s.output()).command == c.ENQUIRE_LINK  # type: ignore[union-attr]
    s.tick(14.0)
    assert c.decode(s.output()).command == c.ENQUIRE_LINK  # type: ignore[union-attr]
    seq = s.next_seq()
    s.request(seq, b"x", "t", 0, 14.5)
    events = s.tick(16.0)
    assert events == [Dropped("t", 0), Closed("keepalive")]
    assert s.state is State.CLOSED


def test_an_answered_keepalive_keeps_the_link() -> None:
    s = _session(keepalive_interval=10.0, keepalive_timeout=2.0, keepalive_tries=1)
    _bound(s)
    s.tick(10.0)
    ka = c.decode(s.output())
    s.receive(c.HEADER.pack(16, c.ENQUIRE_LINK | c.RESP, 0, ka.seq), 11.0)  # type: ignore[union-attr]
    assert s.tick(13.0) == []
    assert s.state is State.BOUND


def test_peer_requests_are_answered_and_passed_up() -> None:
    s = _session()
    _bound(s)
    deliver = c.encode(c.ShortMessage(command=c.DELIVER_SM, seq=77, source_addr="1", short_message=b"R"))
    link = c.HEADER.pack(16, c.ENQUIRE_LINK, 0, 78)
    unknown = c.HEADER.pack(16, 0x1234, 0, 79)
    events = s.receive(deliver + link + unknown, 1.0)
    assert len(events) == 1 and isinstance(events[0], Received) and events[0].frame.seq == 77
    answers = [c.decode(p) for p in Framer(16, 9999).feed(s.output())]
    assert [(a.command, a.seq) for a in answers] == [
        (c.DELIVER_SM | c.RESP, 77),
        (c.ENQUIRE_LINK | c.RESP, 78),
        (c.GENERIC_NACK, 79),
    ]


def test_peer_unbind_and_lost_connection_drop_what_is_in_flight() -> None:
    s = _session()
    _bound(s)
    seq = s.next_seq()
    s.request(seq, b"x", "t", 1, 0.0)
    s.output()
    events = s.receive(c.HEADER.pack(16, c.UNBIND, 0, 5), 1.0)
    assert events == [Dropped("t", 1), Closed("peer_unbind")]
    assert c.decode(s.output()).command == c.UNBIND | c.RESP  # type: ignore[union-attr]
    s = _session()
    _bound(s)
    seq = s.next_seq()
    s.request(seq, b"x", "u", 2, 0.0)
    assert s.lost() == [Dropped("u", 2), Closed("lost")]
    assert s.lost() == []


def test_unbind_waits_for_its_answer() -> None:
    s = _session()
    _bound(s)
    s.unbind(1.0)
    req = c.decode(s.output())
    assert req.command == c.UNBIND  # type: ignore[union-attr]
    assert s.state is State.UNBINDING
    assert s.receive(c.HEADER.pack(16, c.UNBIND | c.RESP, 0, req.seq), 1.5) == [Closed("unbound")]  # type: ignore[union-attr]


def test_the_next_deadline_moves_on_while_a_keepalive_waits() -> None:
    # a deadline left in the past would make a reader spin without ever yielding
    s = _session(keepalive_interval=1.0, keepalive_timeout=5.0)
    _bound(s, 0.0)
    assert s.deadline() == 1.0
    s.tick(1.0)
    assert s.deadline() == 6.0
