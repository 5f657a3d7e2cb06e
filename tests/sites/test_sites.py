from __future__ import annotations

import pytest

from hpcray.errors import SpecError
from hpcray.sites import list_sites, load_site

BUILT_IN = ["aurora", "delta", "frontier", "local", "perlmutter", "polaris"]


def test_builtin_profiles_load():
    for name in BUILT_IN:
        profile = load_site(name)
        assert profile.name == name
        assert profile.scheduler in ("slurm", "pbs", "local")
    assert set(BUILT_IN) <= set(list_sites())


@pytest.mark.parametrize("name,scheduler,launcher,vendor,address", [
    ("frontier", "slurm", "srun", "amd", "hsn0"),
    ("perlmutter", "slurm", "srun", "nvidia", "hsn0"),
    ("delta", "slurm", "srun", "nvidia", "hsn0"),
    ("polaris", "pbs", "mpiexec", "nvidia", "{host}.hsn.cm.polaris.alcf.anl.gov"),
    ("aurora", "pbs", "mpiexec", "intel", "{host}.hsn.cm.aurora.alcf.anl.gov"),
    ("local", "local", "local", "none", "lo"),
])
def test_profile_facts(name, scheduler, launcher, vendor, address):
    p = load_site(name)
    source = p.network_interface if p.address_from == "interface" else p.head_address
    assert (p.scheduler, p.launcher, p.gpu_vendor, source) == (
        scheduler, launcher, vendor, address)


def test_unknown_site_lists_known_ones():
    with pytest.raises(SpecError) as info:
        load_site("summitt")
    assert "unknown site 'summitt'" in str(info.value) and "frontier" in str(info.value)


def test_user_profile_dir_overrides_builtin(tmp_path, monkeypatch):
    (tmp_path / "frontier.yaml").write_text(
        "scheduler: slurm\nlauncher: srun\ncpus_per_node: 64\ngpus_per_node: 8\n"
        "gpu_vendor: amd\nnetwork_interface: hsn1\n")
    monkeypatch.setenv("HPCRAY_SITES_PATH", str(tmp_path))
    assert load_site("frontier").network_interface == "hsn1"


def test_bad_profile_names_line(tmp_path):
    path = tmp_path / "mysite.yaml"
    path.write_text("scheduler: slurm\nlauncher: srun\ncpus_per_node: 8\ngpu_vendor: nvidea\n")
    with pytest.raises(SpecError) as info:
        load_site(str(path))
    assert info.value.line == 4 and info.value.field == "gpu_vendor"
