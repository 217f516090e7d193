"""Link codes: deterministic per store, billed length, a taken code moves on, a resume finds its own."""

from __future__ import annotations

from pathlib import Path

from engine.core.links import ALPHABET, code, link_url
from engine.state.links import LinkStore


def test_codes_are_base62_of_the_length_and_differ_by_key_and_campaign() -> None:
    s = b"k" * 32
    a = code(s, "c1", "2")
    assert len(a) == 7 and set(a) <= set(ALPHABET)
    assert a == code(s, "c1", "2") != code(s, "c1", "3") != code(s, "c2", "2")
    assert code(b"other" * 8, "c1", "2") != a  # another store's secret: other codes
    assert len(code(s, "c1", "2", 10)) == 10
    assert link_url("https://s.cn/l/", "Ab3") == "https://s.cn/l/Ab3"


def test_a_taken_code_moves_on_and_a_resume_gets_the_same_codes(tmp_path: Path) -> None:
    store = LinkStore(tmp_path / "p.links.db")
    try:
        wanted = code(store.secret, "spring", "7")
        # another campaign's recipient already holds the code row 7 of spring would get
        store.db.execute("INSERT INTO link_codes VALUES (?, 'autumn', 'all', 3, 'https://x')", (wanted,))
        first = store.assign("spring", ["5", "6", "7"], ["A", "B", "A"], [5, 6, 7], "https://t", 7)
        assert first[2] != wanted and first[2] == code(store.secret, "spring", "7", 7, 1)
        assert store.resolve(wanted) == ("autumn", "all", 3, "https://x")  # the holder keeps it
        assert store.resolve(first[2]) == ("spring", "A", 7, "https://t")
        again = store.assign("spring", ["5", "6", "7"], ["A", "B", "A"], [5, 6, 7], "https://t", 7)
        assert again == first
        assert store.db.execute("SELECT count(*) FROM link_codes").fetchone()[0] == 4
        # a preview makes the same codes without storing them (except a moved one, which it cannot know)
        assert (
            store.assign("spring", ["5", "6"], ["A", "B"], [5, 6], "https://t", 7, write=False) == first[:2]
        )
    finally:
        store.close()
    reopened = LinkStore(tmp_path / "p.links.db")  # the secret is kept: the same codes later
    try:
        assert code(reopened.secret, "spring", "5") == first[0]
    finally:
        reopened.close()


def test_clicks_once_per_code_and_visitor(tmp_path: Path) -> None:
    store = LinkStore(tmp_path / "p.links.db")
    try:
        (c,) = store.assign("s", ["9"], ["A"], [9], "https://t", 7)
        (g,) = store.assign("s", ["A"], ["A"], [0], "https://t", 7)
        for _ in range(3):
            store.click(c, "", store.resolve(c))  # type: ignore[arg-type]
        for visitor in ("v1", "v1", "v2"):
            store.click(g, visitor, store.resolve(g))  # type: ignore[arg-type]
        assert store.clicks("s") == ({9: 3}, {"A": 2})
        assert store.clicks("other") == ({}, {})
    finally:
        store.close()
