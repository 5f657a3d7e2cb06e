"""Node GPU use from each vendor's tool. There is no GPU here: stand-in tools on PATH print
what the real ones print (recorded sample text) and record the command line they were
given, so the exact argv and the parsing are pinned. Unproven here against real
rocm-smi and xpu-smi (their output formats come from their documentation and recorded runs)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hpcray.metrics import usage

# nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits
# on a 2-GPU H100 node, one GPU busy; a MIG instance reports [N/A] utilisation
NVIDIA = "35, 40123, 81559\n0, 1, 81559\n[N/A], 512, 81559\n"
# rocm-smi --showuse --showmeminfo vram --json (MI250X, two GCDs)
ROCM = json.dumps({
    "card0": {"GPU use (%)": "87", "VRAM Total Memory (B)": "68702699520",
              "VRAM Total Used Memory (B)": "34351349760"},
    "card1": {"GPU use (%)": "0", "VRAM Total Memory (B)": "68702699520",
              "VRAM Total Used Memory (B)": "10960896"}})
# xpu-smi discovery --dump 1,16, then xpu-smi dump -d 0,1 -m 0,18 -n 2 (Aurora: 'N/A' for
# utilisation until the second sample, as ALCF's recorded dumps show; the last row counts)
XPU_DISCOVERY = 'Device ID,Memory Physical Size\n0,"65536.00 MiB"\n1,"65536.00 MiB"\n'
XPU_DUMP = ("Timestamp, DeviceId, GPU Utilization (%), GPU Memory Used (MiB)\n"
            "23:48:25.043,    0,  N/A, 28.02\n"
            "23:48:25.043,    1,  N/A, 4096.00\n"
            "23:48:26.044,    0,  N/A, 28.02\n"
            "23:48:26.044,    1, 61.50, 4096.00\n")


def test_parse_nvidia():
    gpus = usage.parse_nvidia(NVIDIA)
    assert gpus[0] == {"index": 0, "util_percent": 35.0, "memory_used": 40123 * 2**20,
                       "memory_total": 81559 * 2**20}
    assert gpus[2]["util_percent"] is None and gpus[2]["memory_used"] == 512 * 2**20


def test_parse_rocm():
    gpus = usage.parse_rocm("WARNING: AMD GPU device(s) is/are in a low-power state\n" + ROCM)
    assert [g["index"] for g in gpus] == [0, 1]
    assert gpus[0]["util_percent"] == 87 and gpus[0]["memory_used"] == 34351349760
    assert gpus[1]["memory_total"] == 68702699520
    assert usage.parse_rocm("not json") == []


def test_parse_xpu():
    memory = usage.parse_xpu_discovery(XPU_DISCOVERY)
    assert memory == {0: 65536 * 2**20, 1: 65536 * 2**20}
    gpus = usage.parse_xpu_dump(XPU_DUMP, memory)
    assert gpus[0] == {"index": 0, "util_percent": None, "memory_used": 28.02 * 2**20,
                       "memory_total": 65536 * 2**20}
    assert gpus[1]["util_percent"] == 61.5


def _stand_in(bin_dir: Path, name: str, outputs: dict[str, str]) -> Path:
    """An executable that records its arguments and prints the output for them."""
    log = bin_dir / f"{name}.argv"
    script = bin_dir / name
    script.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"outputs = {outputs!r}\n"
        "sys.stdout.write(outputs[' '.join(sys.argv[1:])])\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


@pytest.mark.parametrize("vendor", ["nvidia", "amd", "intel"])
def test_node_usage_asks_each_vendors_tool(tmp_path, monkeypatch, vendor):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if vendor == "nvidia":
        log = _stand_in(bin_dir, "nvidia-smi", {" ".join(usage.NVIDIA_SMI[1:]): NVIDIA})
        expected = [usage.NVIDIA_SMI[1:]]
    elif vendor == "amd":
        log = _stand_in(bin_dir, "rocm-smi", {" ".join(usage.ROCM_SMI[1:]): ROCM})
        expected = [usage.ROCM_SMI[1:]]
    else:
        dump = ["dump", "-d", "0,1", "-m", "0,18", "-n", "2"]
        log = _stand_in(bin_dir, "xpu-smi", {" ".join(usage.XPU_SMI_DISCOVERY[1:]):
                                             XPU_DISCOVERY, " ".join(dump): XPU_DUMP})
        expected = [usage.XPU_SMI_DISCOVERY[1:], dump, dump]  # discovery asked once
        monkeypatch.setattr(usage, "_xpu_devices", None)
    python = Path(os.__file__).parents[2] / "bin"  # the stand-in's interpreter, nothing else
    monkeypatch.setenv("PATH", f"{bin_dir}:{python}:/usr/bin:/bin")
    for tool in ("nvidia-smi", "rocm-smi", "xpu-smi"):
        if not (bin_dir / tool).exists():
            assert usage.shutil.which(tool) is None, f"a real {tool} here: test unsure"
    first = usage.node_usage()
    if vendor == "intel":
        usage.node_usage()
    assert {g["vendor"] for g in first["gpus"]} == {vendor}
    assert len(first["gpus"]) == {"nvidia": 3, "amd": 2, "intel": 2}[vendor]
    assert [json.loads(line) for line in log.read_text().splitlines()] == expected
