"""The power-of-two-choices rule (hpcray/runtime/balance.py) and how each of its users feeds
it: the direct clients by requests outstanding, the federation by a weighted score. The draw
is fixed by a scripted RNG, so each test checks the rule, not a distribution."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from hpcray.runtime.balance import pick_two


class Scripted(random.Random):
    """Draws the pairs it is given, in order; records what it was asked to draw from."""

    def __init__(self, *pairs: tuple) -> None:
        super().__init__(0)
        self.pairs = list(pairs)
        self.asked: list[list] = []

    def sample(self, population, k, *, counts=None):
        self.asked.append(list(population))
        return list(self.pairs.pop(0))


def test_the_less_loaded_of_the_two_drawn_wins_whichever_is_drawn_first():
    load = {"a": 3, "b": 1, "c": 0}
    assert pick_two(["a", "b", "c"], load.__getitem__, rng=Scripted(("a", "b"))) == "b"
    assert pick_two(["a", "b", "c"], load.__getitem__, rng=Scripted(("b", "a"))) == "b"
    # "c" is the least loaded of all, but it was not drawn
    assert pick_two(["a", "b", "c"], load.__getitem__, rng=Scripted(("a", "b"))) != "c"


def test_a_tie_goes_to_the_first_drawn():
    load = {"a": 2, "b": 2}
    assert pick_two(["a", "b"], load.__getitem__, rng=Scripted(("b", "a"))) == "b"
    assert pick_two(["a", "b"], load.__getitem__, rng=Scripted(("a", "b"))) == "a"


def test_tried_candidates_are_never_drawn():
    rng = Scripted(("b", "d"))
    load = dict.fromkeys("abcd", 0)
    assert pick_two(list("abcd"), load.__getitem__, exclude=["a", "c"], rng=rng) == "b"
    assert rng.asked == [["b", "d"]]


def test_one_candidate_left_is_taken_without_a_draw_and_none_left_is_none():
    rng = Scripted()
    assert pick_two(["a", "b"], {"a": 9, "b": 0}.__getitem__, exclude=["b"], rng=rng) == "a"
    assert pick_two(["a"], {"a": 9}.__getitem__, rng=rng) == "a"
    assert pick_two(["a", "b"], {"a": 0, "b": 0}.__getitem__, exclude=["a", "b"],
                    rng=rng) is None
    assert pick_two([], len) is None
    assert rng.asked == []


def test_the_direct_client_balances_on_requests_outstanding_and_skips_tried_replicas():
    from hpcray.services.direct.client import DirectClient

    client = DirectClient.__new__(DirectClient)  # the picker only: no sockets, no Ray
    client._choices = ["r1", "r2", "r3"]
    client._outstanding = defaultdict(int, {"r1": 5, "r2": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(random, "sample", Scripted(("r1", "r2"), ("r1", "r3")).sample)
        assert client._pick([]) == "r2"
        assert client._pick(["r2"]) == "r3"  # r3: none outstanding
    assert client._pick(["r1", "r2"]) == "r3"
    assert client._pick(["r1", "r2", "r3"]) is None


def test_the_async_client_balances_on_requests_outstanding_and_skips_tried_replicas():
    from hpcray.services.direct.aclient import AsyncDirectClient

    scripted = Scripted(("r2", "r1"), ("r1", "r3"))

    async def picks() -> list[str]:
        client = AsyncDirectClient("svc", addresses={r: f"tcp://127.0.0.1:{p}" for r, p in
                                                     (("r1", 1), ("r2", 2), ("r3", 3))},
                                   token=b"")
        try:
            client._outstanding.update({"r1": 5, "r2": 1})
            return [await client._replica([]), await client._replica(["r2"])]
        finally:
            client.close()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(random, "sample", scripted.sample)
        assert asyncio.run(picks()) == ["r2", "r3"]  # r3: none outstanding
    assert scripted.asked == [["r1", "r2", "r3"], ["r1", "r3"]]


def _federation(*instances):
    from hpcray.remote.federation import Federation

    return Federation("svc", list(instances), probe_s=60)


def _instance(name: str, *, outstanding: int = 0, rtt: float = 0.01, weight: float = 1.0,
              cap: int = 8, cooling: bool = False):
    from hpcray.remote.federation import Instance

    def never(method, payload, timeout):
        raise AssertionError("the picker does not call")

    return Instance(name, "test", cap, weight, never, outstanding=outstanding, rtt=rtt,
                    cooling=cooling)


def test_the_federation_weighs_each_instance_by_its_weight():
    # heavy has more in flight, but its weight makes its score lower: (3+1)*rtt/4 < (1+1)*rtt/1
    heavy, light = _instance("heavy", outstanding=3, weight=4.0), _instance("light", outstanding=1)
    fed = _federation(light, heavy)
    try:
        fed._rng = Scripted((light, heavy), (heavy, light))
        assert fed._pick(set(), None)[0] is heavy
        assert fed._pick(set(), None)[0] is heavy  # now 4 in flight: (4+1)/4 < 2, still heavy
        assert heavy.outstanding == 5 and light.outstanding == 1  # a pick counts in flight
    finally:
        fed.close()


def test_the_federation_skips_tried_cooling_and_full_instances():
    tried, cool = _instance("tried"), _instance("cool", cooling=True)
    full, free = _instance("full", outstanding=2, cap=2), _instance("free", outstanding=7)
    other = _instance("other", outstanding=6)
    fed = _federation(tried, cool, full, free, other)
    try:
        rng = fed._rng = Scripted((free, other), (free, tried))
        assert fed._pick({"tried"}, None)[0] is other
        assert [i.name for i in rng.asked[0]] == ["free", "other"]
        # with every free one tried, the tried ones are drawn from again (unless strict)
        assert fed._pick({"tried", "free", "other"}, None)[0] is tried
        assert [i.name for i in rng.asked[1]] == ["tried", "free", "other"]
        from hpcray.errors import NoInstance

        with pytest.raises(NoInstance, match="no instance left to try"):
            fed._pick({"tried", "cool", "full", "free", "other"}, None, strict=True)
    finally:
        fed.close()
