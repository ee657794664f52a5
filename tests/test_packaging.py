"""What an installed vlcd-dist needs: the built-in recipes are package data and resolve by name
from any folder, also from a wheel installed into a fresh environment; the base dependencies
state ranges (a cluster keeps its torch) while make installs the tested versions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO

from vlcd_dist.config import (
    ConfigError,
    builtin_recipe,
    builtin_recipes,
    load_config,
    resolve_recipe,
    to_dict,
)

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_builtin_recipes_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(builtin_recipes()) == {"demo", "paper"}
    demo = resolve_recipe("demo")
    assert demo == resolve_recipe("demo.yaml") == builtin_recipe("demo")
    assert demo.parent.parent == Path(__import__("vlcd_dist").__file__).parent
    assert to_dict(load_config("demo")) == to_dict(load_config(demo))
    assert to_dict(load_config("paper")).keys() == to_dict(load_config("demo")).keys()


def test_a_file_wins_over_a_builtin_name_and_unknown_names_list_the_builtins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("run: {seed: 7}\n")
    assert resolve_recipe("demo") == Path("demo")
    assert load_config("demo").run.seed == 7
    with pytest.raises(ConfigError, match=r"recipe nope\.yaml not found.*demo, paper"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="not found"):
        resolve_recipe("some/folder/demo.yaml")


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def test_wheel_ships_the_recipes_and_resolves_them_from_another_folder(tmp_path):
    """Build the wheel, install it (without dependencies) into a fresh venv whose dependencies
    come from this environment, and resolve and load the demo recipe from an empty folder."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(wheels), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("vlcd_dist-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _site_packages(python)
    # Dependencies only: a plain path entry (not a site folder), so the source checkout's
    # editable-install hook in that folder is not run and vlcd_dist can only come from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Nothing may point the fresh environment back at a source tree.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (
        "import json, vlcd_dist; from vlcd_dist.config import load_config, resolve_recipe, "
        "to_dict; p = resolve_recipe('demo'); "
        "print(json.dumps({'package': vlcd_dist.__file__, 'recipe': str(p), "
        "'cfg': to_dict(load_config('demo'))}))"
    )
    out = subprocess.run(
        [str(python), "-c", probe],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout)
    assert Path(got["package"]).is_relative_to(site)
    assert Path(got["recipe"]).is_relative_to(site) and Path(got["recipe"]).name == "demo.yaml"
    assert got["cfg"] == json.loads(
        json.dumps(to_dict(load_config(REPO / "vlcd_dist/configs/demo.yaml")))
    )
    # The vlcd command of the wheel names the recipe's own (missing) data folder, i.e. it read it.
    cmd = [str(venv / "bin" / "vlcd"), "train-teacher", "--config", "demo", "--out", "x"]
    run = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "data.placenta='shards/demo/placenta': no such folder" in run.stderr
    assert not (elsewhere / "x").exists()


def _requirement(spec: str) -> tuple[str, str]:
    name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0)
    return name.lower(), spec[len(name) :].strip()


def test_base_dependencies_are_ranges_and_make_installs_the_tested_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # The base install is what `vlcd predict` runs on: no torch; torch comes with `train`.
    base = dict(_requirement(d) for d in project["dependencies"])
    assert set(base) == {"numpy", "pillow"}
    assert project["optional-dependencies"]["infer"] == ["onnxruntime>=1.18"]
    deps = dict(_requirement(d) for d in project["optional-dependencies"]["train"])
    for name in ("torch", "torchvision"):
        assert deps[name].startswith(">="), f"{name} must be a range, not {deps[name]!r}"
        assert "==" not in deps[name]
    assert "train" in re.search(r"EXTRAS \?= (\S+)", (REPO / "Makefile").read_text()).group(1)
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    # Every direct dependency is pinned, so a make install is the tested set.
    optional = [d for group in project["optional-dependencies"].values() for d in group]
    for spec in [*project["dependencies"], *optional]:
        name = _requirement(spec)[0].replace("_", "-")
        assert name in {k.lower().replace("_", "-") for k in pins}, f"{name} not in constraints"
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile
    assert re.search(r"pip install .*-c \$\(CONSTRAINTS\).* -e '\.\[\$\(EXTRAS\)\]'", makefile)
