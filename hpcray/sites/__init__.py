"""Site profiles: built-in data files plus the user's own (HPCRAY_SITES_PATH, ~/.config)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from hpcray import env
from hpcray.errors import SpecError
from hpcray.sites.profile import SiteProfile
from hpcray.spec.loader import validation_to_spec_error
from hpcray.spec.yamlsource import load_yaml_file

__all__ = ["SiteProfile", "list_sites", "load_site", "site_search_path"]


def site_search_path() -> list[Path]:
    """User directories first, so a user's profile can replace a built-in one."""
    paths = [Path(p) for p in os.environ.get(env.SITES_PATH, "").split(os.pathsep) if p]
    config_home = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    paths.append(config_home / "hpcray" / "sites")
    paths.append(Path(str(resources.files("hpcray.sites"))))
    return paths


def _files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in reversed(site_search_path()):
        if directory.is_dir():
            for f in sorted(directory.glob("*.yaml")):
                found[f.stem] = f
    return found


def list_sites() -> list[str]:
    return sorted(_files())


def load_site_file(path: str | Path) -> SiteProfile:
    source = load_yaml_file(path)
    if not isinstance(source.data, dict):
        raise SpecError("a site profile must be a mapping", path=str(path), line=1)
    data = {"name": Path(path).stem, **source.data}
    try:
        return SiteProfile.model_validate(data)
    except ValidationError as exc:
        raise validation_to_spec_error(exc, source, SiteProfile) from None


def load_site(name_or_path: str) -> SiteProfile:
    """A profile by name (built-in or user) or by path to a YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_site_file(name_or_path)
    files = _files()
    if name_or_path not in files:
        raise SpecError(
            f"unknown site '{name_or_path}'; known sites: {', '.join(sorted(files))} "
            f"(add your own as <name>.yaml in {site_search_path()[-2]})")
    return load_site_file(files[name_or_path])
