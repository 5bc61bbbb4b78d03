"""The Docker files stay in step with the repository (no Docker engine needed): every file they copy
exists and is in the build context, they install with the README's set-up (so pyproject's dependency
set, and setup.sh's torch), run as a non-root user with a /healthz health check, and compose serves a
mounted index and checkpoint through settings the service knows."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import yaml

from service.settings import ENV_PREFIX, Settings

tomllib = pytest.importorskip("tomllib", reason="Python ≥ 3.11 reads pyproject.toml with tomllib")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                        if not line.lstrip().startswith("#")))
    pairs = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each starts with FROM)."""
    groups: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append((keyword, rest))
    return groups


def copy_sources(path: Path) -> list[str]:
    """Sources of COPY instructions that read the build context (not --from another stage)."""
    sources = []
    for keyword, rest in instructions(path):
        if keyword == "COPY" and "--from" not in rest:
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            sources.extend(words[:-1])
    return sources


def ignore_allowlist(path: Path) -> set[str]:
    """Paths re-included by the Dockerfile's own .dockerignore (which first excludes everything)."""
    lines = [line.strip() for line in Path(f"{path}.dockerignore").read_text().splitlines()]
    assert "*" in lines, "the .dockerignore should exclude everything, then allow what the image copies"
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def default_torch_spec() -> str:
    """setup.sh's default TORCH_SPEC (the torch the README's set-up installs)."""
    match = re.search(r'TORCH_SPEC=\$\{TORCH_SPEC:-"([^"]+)"\}', (ROOT / "scripts" / "setup.sh").read_text())
    assert match, "scripts/setup.sh no longer sets a default TORCH_SPEC"
    return match.group(1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_files_exist_and_are_in_the_build_context(dockerfile):
    allowed = ignore_allowlist(dockerfile)
    sources = copy_sources(dockerfile)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
        assert source.rstrip("/") in allowed or source.rstrip("/") == ".", f"{source} is excluded by the .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_install_is_the_readme_setup_with_pyprojects_dependencies(dockerfile):
    sources = {s.rstrip("/") for s in copy_sources(dockerfile)}
    # Everything pip needs to install the distribution: its metadata, its readme and every package.
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "scripts/setup.sh"}
    needed |= {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= sources, f"{dockerfile.name} misses {sorted(needed - sources)}"
    runs = [rest for keyword, rest in instructions(dockerfile) if keyword == "RUN"]
    assert any("scripts/setup.sh" in run for run in runs), "the image must install with scripts/setup.sh"
    # No second dependency list: any package named in a pip command must be one pyproject declares.
    declared = {re.split(r"[<>=!~\[ ;]", dep)[0].lower() for dep in PYPROJECT["project"]["dependencies"]}
    for run in runs:
        for command in re.findall(r"pip3? install ([^&;]+)", run):
            names = {re.split(r"[<>=!~\[]", w)[0].lower() for w in shlex.split(command) if not w.startswith("-")}
            assert names <= declared, f"{dockerfile.name} installs {sorted(names - declared)} outside pyproject"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_installs_without_the_dev_extras(dockerfile):
    runs = [rest for keyword, rest in instructions(dockerfile) if keyword == "RUN" and "scripts/setup.sh" in rest]
    # `EXTRAS= bash scripts/setup.sh`: an empty EXTRAS installs the project without tests and lint tools.
    assert runs and all(re.search(r"(^|\s)EXTRAS=\s", run) for run in runs), f"{dockerfile.name} installs dev extras"
    assert "EXTRAS=${EXTRAS-dev}" in (ROOT / "scripts" / "setup.sh").read_text(), "setup.sh no longer reads EXTRAS"


def test_cuda_image_installs_setups_torch_versions_from_a_cuda_index():
    args = [rest for keyword, rest in instructions(DOCKERFILES[1]) if keyword == "ARG" and rest.startswith("TORCH_SPEC=")]
    assert len(args) == 1, "Dockerfile.cuda should take the torch pip arguments as ARG TORCH_SPEC"
    spec = args[0].partition("=")[2].strip('"')
    pins = [w for w in shlex.split(spec) if "==" in w]
    assert pins == shlex.split(default_torch_spec()), "CUDA torch must be the version the README set-up pins"
    assert "--index-url" in spec and "/whl/cu" in spec
    assert any("TORCH_SPEC" in rest and "setup.sh" in rest for keyword, rest in instructions(DOCKERFILES[1]) if keyword == "RUN")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_is_non_root_with_a_healthz_check(dockerfile):
    groups = stages(dockerfile)
    assert len(groups) >= 2, "multi-stage: build the venv in one stage, run from a clean one"
    final = groups[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    port = re.search(r"127\.0\.0\.1:(\d+)/healthz", health[0]).group(1)
    assert ("EXPOSE", port) in final
    command = next(rest for keyword, rest in final if keyword == "CMD")
    assert "serve" in command and f'"{port}"' in command and "0.0.0.0" in command


def test_compose_serves_a_mounted_index_and_checkpoint():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert compose["services"]
    for name, service in compose["services"].items():
        build = service["build"]
        context = (ROOT / "docker" / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file(), name
        env = service["environment"]
        for key in env:
            assert key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX).lower() in fields, f"{name}: {key}"
        # "${INDEX_DIR:-../runs/demo/index}:/data/index[:ro]": the container path follows the host part.
        targets = {re.sub(r"\$\{[^}]*\}", "HOST", volume).split(":")[1] for volume in service["volumes"]}
        assert {env["RETRIEVAL_INDEX_DIR"], env["RETRIEVAL_CHECKPOINT"]} <= targets
        assert all(port.endswith(":8000") for port in service["ports"])


def test_milvus_compose_runs_two_replicas_over_one_milvus_behind_nginx():
    compose = yaml.safe_load((ROOT / "docker" / "compose.milvus.yaml").read_text())
    services = compose["services"]
    fields = {f.name for f in dataclasses.fields(Settings)}
    replicas = [name for name, service in services.items() if "RETRIEVAL_INDEX_DIR" in service.get("environment", {})]
    assert len(replicas) == 2 and "milvus" in services and "nginx" in services
    for name in replicas:
        env = services[name]["environment"]
        assert env["RETRIEVAL_MILVUS_URI"] == "http://milvus:19530" and "MILVUS_TOKEN" in env
        assert all(k.removeprefix(ENV_PREFIX).lower() in fields for k in env if k.startswith(ENV_PREFIX)), name
        assert services[name]["depends_on"]["milvus"]["condition"] == "service_healthy"
    conf_volume = services["nginx"]["volumes"][0].split(":")[0]
    conf = (ROOT / "docker" / conf_volume).read_text()
    assert all(f"server {name}:8000" in conf for name in replicas)
