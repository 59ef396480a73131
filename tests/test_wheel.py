"""The wheel alone, as a person who runs `pip install .` gets it: built from the checkout,
installed (not editable) into a fresh virtual environment, and run from a folder that holds no
source: `atlas build` on a small model saved to a local directory, `atlas sql`, `atlas app`
until it answers a page, and the Prefect deployments' entry point.

The fresh environment takes the dependencies (torch, transformers, ...) from this one through a
path entry, so the test needs no download; the atlas itself comes only from the wheel (checked
by where `atlas` is imported from).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.appdriver import chromium, render, serve
from tests.tiny import tiny_model_dir

ROOT = Path(__file__).parent.parent
SMALL = ["--layers", "1,3", "--tokens", str(64 * 48), "--d-sae", "64", "--k", "4",
         "--block-size", "64", "--epochs", "1", "--train-batch", "256", "--n-examples", "3",
         "--batch-blocks", "16", "--threshold", "0.5"]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> dict:
    """Build the wheel, install it into a fresh venv; return its paths and a clean env."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the Dockerfile copies, so setuptools' build/ folder never
    # lands in (or is reused from) the checkout.
    src = root / "src"
    src.mkdir()
    for part in ("pyproject.toml", "setup.py", "README.md", "atlas", "sql", "app", "flows"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        copy(ROOT / part, src / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (ROOT / part).is_dir() else {}))
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(src)], check=True, cwd=root)
    (wheel,) = dist.glob("feature_atlas-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True
                          ).stdout.strip()
    # Dependencies from this environment: a plain path entry (its .pth files, among them an
    # editable install of the checkout, are not processed there).
    Path(site, "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                    "--no-deps", "--ignore-installed", "--no-warn-script-location",
                    str(wheel)], check=True, cwd=root)
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PREFECT_HOME=str(root / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return {"wheel": wheel, "venv": venv, "python": py, "atlas": venv / "bin" / "atlas",
            "work": work, "env": env}


def run(env: dict, *args: str, timeout: float = 600) -> str:
    done = subprocess.run([*args], cwd=env["work"], env=env["env"], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_wheel_holds_the_sql_app_and_flows(wheel_env):
    names = zipfile.ZipFile(wheel_env["wheel"]).namelist()
    for want in ("atlas/sql/000_core.sql", "atlas/app/streamlit_app.py",
                 "atlas/flows/build.py", "atlas/analyses/runner.py", "atlas/data/"):
        assert any(n.startswith(want) for n in names), want
    assert not any(n.startswith(("flows/", "app/", "sql/", "tests/")) for n in names)


def test_the_installed_package_is_the_wheel(wheel_env):
    out = run(wheel_env, str(wheel_env["python"]), "-c",
              "import json, atlas, atlas.app, atlas.flows, atlas.sql; "
              "print(json.dumps([m.__file__ for m in (atlas, atlas.app, atlas.flows, "
              "atlas.sql)]))")
    for path in json.loads(out):
        assert Path(path).is_relative_to(wheel_env["venv"]), path


def test_build_sql_and_app_from_the_wheel(wheel_env):
    db = wheel_env["work"] / "atlas.duckdb"
    out = run(wheel_env, str(wheel_env["atlas"]), "build", "--db", str(db), "--model",
              str(tiny_model_dir()), *SMALL)
    assert "built" in out and db.exists()
    out = run(wheel_env, str(wheel_env["atlas"]), "sql", "--db", str(db), "--format", "json",
              "SELECT analysis, count(*) AS runs FROM analysis_runs GROUP BY 1 ORDER BY 1")
    runs = {r["analysis"]: r["runs"] for r in json.loads(out)}
    assert runs == {"absorption": 2, "crystals": 2, "galaxy": 2, "lobes": 2, "universality": 1}
    with serve(db, command=[str(wheel_env["atlas"])], cwd=wheel_env["work"]) as url:
        if chromium() is None:
            pytest.skip("Chromium is not installed; the app answered its health check")
        html = render(f"{url}/?page=Overview", wait_for="tiny-random-llama")
        assert "Feature Atlas" in html


def test_the_deployment_entry_point_runs_from_a_folder_without_source(wheel_env):
    deployment = yaml.safe_load((ROOT / "docker" / "prefect.yaml").read_text())
    local = next(d for d in deployment["deployments"] if d["name"] == "default-local")
    db = wheel_env["work"] / "deployed.duckdb"
    config = {**local["parameters"]["config"], "db": str(db), "model": str(tiny_model_dir()),
              "layers": [1], "tokens": 64 * 24, "d_sae": 32, "k": 4, "block_size": 64,
              "epochs": 1, "batch_blocks": 8, "shard_blocks": 8, "analyses": []}
    script = (f"from prefect.flows import load_flow_from_entrypoint\n"
              f"flow = load_flow_from_entrypoint({local['entrypoint']!r})\n"
              f"state = flow(config={config!r}, return_state=True)\n"
              f"assert state.is_completed(), state\n"
              f"print('deployed', state.result().sae_ids)\n")
    out = run(wheel_env, str(wheel_env["python"]), "-c", script)
    assert "deployed" in out and db.exists()
    assert not any(p.suffix == ".py" for p in wheel_env["work"].rglob("*"))
