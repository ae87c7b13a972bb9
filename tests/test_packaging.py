"""The pack installs the way users install packs: registry metadata, requirements, a copy in custom_nodes.

- pyproject.toml against the Comfy registry's specification (docs.comfy.org/registry/specifications)
  and against comfy-cli's own `comfy node validate` (installed by `make setup` in .host/comfy-cli);
- requirements.txt installs into the host ComfyUI's venv without touching torch;
- ComfyUI-Manager / registry style: the pack copied (not linked) into a fresh ComfyUI's custom_nodes,
  without what .comfyignore leaves out, its requirements installed with the host's pip, the server
  started: both nodes are in /object_info, with descriptions and a tooltip on every input.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dit_cache
import pytest
import tomllib
from comfy_server import PACK_DIR_NAME, ROOT, ComfyServer
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
TORCH_PACKAGES = {"torch", "torchvision", "torchaudio"}
COMFY_CLI = Path(os.environ.get("COMFY_CLI", ROOT / ".host" / "comfy-cli" / "bin" / "comfy"))
# The registry's rules for a node id: < 100 characters of letters, digits, -, _ and .; starts with a
# letter; no two special characters in a row.
NODE_ID = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*")


def requirement_lines() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_pyproject_meets_the_registry_specification() -> None:
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert NODE_ID.fullmatch(project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()  # the registry's advice: no "ComfyUI" in the id
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (ROOT / project["license"]["file"]).is_file()
    assert project["description"] and SpecifierSet(project["requires-python"]).contains("3.11")
    assert "Operating System :: OS Independent" in project["classifiers"]
    assert NODE_ID.fullmatch(comfy["PublisherId"]) and comfy["DisplayName"]
    assert SpecifierSet(comfy["requires-comfyui"]).contains("0.3.75")
    # The registry installs [project] dependencies; ComfyUI-Manager and users requirements.txt: the same list.
    assert project["dependencies"] == requirement_lines()


def test_comfy_cli_validates_the_pyproject(tmp_path: Path) -> None:
    """comfy-cli's `comfy node validate` (what `comfy node publish` runs first) accepts ours, refuses a broken one."""
    assert COMFY_CLI.is_file(), f"no comfy-cli at {COMFY_CLI}: `make setup` installs it into .host/comfy-cli"
    command = [str(COMFY_CLI), "--skip-prompt", "--no-enable-telemetry", "node", "validate"]
    env = {**os.environ, "HOME": str(tmp_path)}  # comfy-cli writes its config under the home directory
    ours = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False)
    said = ours.stdout + ours.stderr
    assert ours.returncode == 0 and "All validation checks passed" in said and "Warning" not in said, said

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text().replace('version = "', 'old_version = "'), encoding="utf-8"
    )
    refused = subprocess.run(command, cwd=broken, capture_output=True, text=True, env=env, timeout=120, check=False)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "project version is empty" in said, said


def test_requirements_never_name_torch() -> None:
    assert not {Requirement(line).name for line in requirement_lines()} & TORCH_PACKAGES


def test_installing_the_requirements_leaves_the_hosts_torch_alone(tmp_path: Path) -> None:
    """pip's own plan for `pip install -r requirements.txt` in the host's venv installs no torch package."""
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
         "-r", str(ROOT / "requirements.txt")],
        check=True, timeout=300,
    )
    planned = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert not planned & TORCH_PACKAGES, planned


def torch_version() -> str:
    return subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def installed() -> ComfyServer:
    """A fresh ComfyUI base with the pack copied in and its requirements installed, as ComfyUI-Manager does."""
    before = torch_version()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements.txt")],
        check=True, timeout=600,
    )
    assert torch_version() == before
    with ComfyServer(copy_pack=True) as server:
        yield server


def test_the_copied_pack_loads_both_nodes_in_a_fresh_comfyui(installed: ComfyServer) -> None:
    pack = installed.base_dir / "custom_nodes" / PACK_DIR_NAME
    assert not pack.is_symlink() and (pack / "__init__.py").is_file() and (pack / "workflows").is_dir()
    assert not any((pack / name).exists() for name in ("tests", "tools", "bench"))  # left out by .comfyignore
    info = installed.all_object_info()
    ours = {name for name in info if name.startswith("DiTCache_")}
    assert ours == set(dit_cache.NODE_CLASS_MAPPINGS)
    for name in ours:
        assert info[name]["python_module"] == f"custom_nodes.{PACK_DIR_NAME}"
        assert info[name]["description"] and info[name]["category"] == "DiT Cache"
        inputs = {k: v for section in info[name]["input"].values() for k, v in section.items()}
        assert all(spec[1].get("tooltip") for spec in inputs.values()), name
    # ComfyUI's import-time summary: one line per custom node folder, "(IMPORT FAILED)" after the time if it failed.
    (line,) = [line for line in installed.log_text().splitlines() if line.endswith(f"/custom_nodes/{PACK_DIR_NAME}")]
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # 0.33 colours a level tag in front
    assert re.fullmatch(r"(\[INFO\])?\s*\d+\.\d+ seconds: .*", line), line


def test_comfyignore_leaves_out_only_development_files() -> None:
    ignored = {line.strip().strip("/") for line in (ROOT / ".comfyignore").read_text().splitlines() if line.strip()}
    assert {"tests", "tools", "bench"} <= ignored and not ignored & {"workflows", "docs", "nodes", "caching", "model_patches"}
