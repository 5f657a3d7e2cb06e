"""vllm_llm's choices that need no engine: how a CPU replica with tensor x pipeline parallel
ranks shares its cores between them (vLLM's CPU engine otherwise wants a NUMA node per rank)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from hpcray.deployments.vllm_llm import cpu_binding  # noqa: E402


@pytest.mark.parametrize("cpus, ranks, expected", [
    ([0, 1], 2, "0|1"),
    (list(range(8)), 2, "0,1,2,3|4,5,6,7"),
    ([4, 5, 6, 7, 8, 9], 4, "4|5|6|7"),
    ([3], 2, "3|3"),          # fewer cores than ranks: they share
])
def test_each_rank_gets_its_own_contiguous_share_of_the_replicas_cores(cpus, ranks, expected):
    assert cpu_binding(cpus, ranks) == expected


def test_no_core_is_an_error():
    with pytest.raises(ValueError):
        cpu_binding([], 2)
