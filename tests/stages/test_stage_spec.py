"""The `stages:` section: validation with file and line, fan-out, command filling, order."""

from __future__ import annotations

import pytest

from hpcray.errors import SpecError
from hpcray.spec import load_workflow
from hpcray.spec.stages import FanOut, StageSpec, check_stage_graph
from hpcray.stages.fanout import expand, fill


def load(tmp_path, body: str):
    path = tmp_path / "wf.yaml"
    path.write_text("name: t\n" + body)
    return load_workflow(path)


def test_a_valid_pipeline(tmp_path):
    wf = load(tmp_path, """\
services:
  - {name: noop, deployment: noop}
stages:
  - name: prep
    function: prep:run
    each: {grid: {dose: [0.5, 2], cell: [a, b]}}
    resources: {cpus: 2, gpus: 1}
  - name: annotate
    command: annotate --in {item} --out {run_dir}/out/{index}.tsv
    stream_from: prep
    services: [noop]
    retries: 2
    timeout: 60
  - {name: report, function: 'report:main', after: [annotate]}
""")
    assert [s.name for s in wf.stages] == ["prep", "annotate", "report"]
    assert wf.stages[1].command == ["annotate", "--in", "{item}", "--out",
                                    "{run_dir}/out/{index}.tsv"]
    assert check_stage_graph(wf.stages, ["noop"]) == ["prep", "annotate", "report"]


@pytest.mark.parametrize(("body", "message"), [
    ("stages:\n  - {name: a}\n", r"wf.yaml:3: stages.0: .*exactly one of 'function'"),
    ("stages:\n  - {name: a, function: f, command: [x]}\n", "exactly one of 'function'"),
    ("stages:\n  - {name: a, function: nocolon}\n", "must be 'module:function'"),
    ("stages:\n  - name: a\n    function: m:f\n    each: {grid: {x: []}}\n",
     r"wf.yaml:5: stages.0.each: .*every grid axis"),
    ("stages:\n  - {name: a, function: 'm:f', after: [b]}\n", "unknown stage 'b'"),
    ("stages:\n  - {name: a, function: 'm:f', after: [b]}\n  - {name: b, function: 'm:f', "
     "after: [a]}\n", "stages a, b wait for each other"),
    ("stages:\n  - {name: a, function: 'm:f', services: [llm]}\n", "unknown service 'llm'"),
    ("stages:\n  - {name: a, function: 'm:f', retries: -1}\n", "stages.0.retries"),
    ("stages:\n  - {name: A, function: 'm:f'}\n", "not a valid stage name"),
    ("stages:\n  - {name: a, function: 'm:f', launch: {nodes: 2}}\n", "give 'command'"),
    ("allocation: {nodes: 2}\nstages:\n  - {name: a, command: [x], launch: {nodes: 4}}\n",
     "launches on 4 nodes but the allocation has 2"),
    ("stages:\n  - {name: a, function: 'm:f', each: {items: [1]}, stream_from: a}\n",
     "either 'each' or 'stream_from'"),
])
def test_bad_stages_name_the_field(tmp_path, body, message):
    with pytest.raises(SpecError, match=message):
        load(tmp_path, body)


def test_fan_out_forms(tmp_path):
    for name in ("b.vcf", "a.vcf", "c.txt"):
        (tmp_path / name).write_text("")
    assert expand(None, tmp_path) == [None]
    assert expand(FanOut(items=[3, 1]), tmp_path) == [3, 1]
    assert expand(FanOut(glob="*.vcf"), tmp_path) == [str(tmp_path / "a.vcf"),
                                                      str(tmp_path / "b.vcf")]
    assert expand(FanOut(grid={"x": [1, 2], "y": ["a"]}), tmp_path) == [
        {"x": 1, "y": "a"}, {"x": 2, "y": "a"}]


def test_command_filling_keeps_each_value_one_argument():
    argv = fill(["tool", "--in", "{item}", "--dose={dose}", "{run_dir}/{index}"],
                {"dose": 2.0, "path": "a b; rm -rf /"}, {"index": 7, "run_dir": "/r"})
    assert argv[:2] == ["tool", "--in"]
    assert argv[2] == "{'dose': 2.0, 'path': 'a b; rm -rf /'}"  # one argument, no shell
    assert argv[3:] == ["--dose=2.0", "/r/7"]
    # other braces are left alone: code and JSON in arguments
    assert fill(["python3", "-c", 'print({"a": {index}})', "{sample}"], 1, {"index": 0}) == \
        ["python3", "-c", 'print({"a": 0})', "{sample}"]


def test_stream_and_after_order():
    a = StageSpec(name="a", function="m:f")
    b = StageSpec(name="b", function="m:g", stream_from="a")
    c = StageSpec(name="c", command=["x"], after=["b"])
    assert check_stage_graph([c, b, a], []) == ["a", "b", "c"]
