"""Test helpers: SAELens SAEs of every architecture with small random weights, a Hugging
Face hub cache written in the hub's own layout (blobs, snapshot links, refs/main), and `atlas`
commands in child processes forked with the atlas imported (`CliProcess`, `run_cli`)."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from sae_lens import (AbsTopKSAE, AbsTopKSAEConfig, GatedSAE, GatedSAEConfig, JumpReLUSAE,
                      JumpReLUSAEConfig, MatchingPursuitSAE, MatchingPursuitSAEConfig,
                      StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig)
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata

# architecture -> (SAE class, config class, extra config); batchtopk is a training
# architecture that SAELens saves for inference as jumprelu.
ARCHITECTURES = {
    "standard": (StandardSAE, StandardSAEConfig, {}),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 6}),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    "gated": (GatedSAE, GatedSAEConfig, {}),
    "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, {"k": 6}),
    "abstopk": (AbsTopKSAE, AbsTopKSAEConfig, {"k": 6}),
    "matching_pursuit": (MatchingPursuitSAE, MatchingPursuitSAEConfig, {}),
}
SAVED_AS = {"batchtopk": "jumprelu"}


def random_sae(architecture: str, *, d_in: int, d_sae: int, hook: str, input_norm: float,
               seed: int = 0, model_name: str = "tiny-random-llama"):
    """An SAELens SAE with random weights whose pre-activations on inputs of norm
    `input_norm` are O(1), so a good share of features fire above a threshold of 0.5."""
    cls, cfg_cls, extra = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook,
                                                                model_name=model_name), **extra)
    sae = cls(cfg)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.b_dec.zero_()
        if "W_enc" in sae._parameters:  # matching pursuit's encoder is its decoder
            sae.W_enc.copy_(torch.randn(d_in, d_sae) * (2.0 / input_norm))
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.3)
        if architecture == "batchtopk":
            sae.topk_threshold.fill_(0.3)
    return sae.eval()


def save_sae(sae, path: Path) -> Path:
    """Save as SAELens does for inference (`save_inference_model` where the class has it)."""
    (sae.save_inference_model if hasattr(sae, "save_inference_model") else sae.save_model)(path)
    return path


def write_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes], *,
                   revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Write files into a Hugging Face hub cache as `huggingface_hub` lays it out:
    `models--org--name/blobs/<sha256>`, `snapshots/<revision>/<path>` linking to the blob,
    and `refs/main` naming the revision. Returns the snapshot folder."""
    root = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    for rel, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under a folder, keyed by its path relative to it."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def atlas_offline(cache: Path, *args: str) -> str:
    """Run the `atlas` console script with the hub cache set and the hub switched off."""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home"),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    atlas = Path(sys.executable).with_name("atlas")
    done = subprocess.run([str(atlas), *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# -- the CLI in a child process, without its start-up -----------------------------------------

CLI_PRELOAD = ("atlas.cli", "atlas.builder", "atlas.analyses.runner", "atlas.index",
               "atlas.store", "duckdb", "faiss", "pyarrow", "sklearn.linear_model",
               "sklearn.cluster", "sklearn.metrics")
"""Modules the forkserver imports once (~8 s of torch, transformers and SAELens on 2 cores),
so that each child starts as a fork with them imported instead of a fresh interpreter."""


@functools.cache
def _forkserver():
    """multiprocessing's forkserver context, preloading `CLI_PRELOAD` (started on first use)."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(CLI_PRELOAD))
    return ctx


def _cli_child(argv: list[str], env: dict[str, str], stdout: str, stderr: str,
               before=None, script: str | None = None) -> None:
    """The child: the given environment and output files, `before` (e.g. resource limits),
    then `atlas <argv>` (or `python <script> <argv>`); its exit status is the command's."""
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    if before is not None:
        before()
    import atexit
    import runpy
    import threading
    import traceback

    from atlas.cli import main

    try:
        if script is None:
            code = main(argv)
        else:
            sys.argv = [script, *argv]
            sys.path.insert(0, str(Path(script).parent))
            runpy.run_path(script, run_name="__main__")
            code = 0
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            sys.stderr.write(f"{exc.code}\n")  # as the interpreter reports SystemExit("...")
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # Exit as the interpreter does, in its order: the threads' exit hooks (they shut down
    # joblib's worker pools), then atexit. Returning through multiprocessing would first join
    # every child process, the pools' workers among them, which only those hooks stop.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class CliProcess:
    """`atlas <argv>` (or `python <script> <argv>`) in a child forked from a process that has
    the atlas imported already (multiprocessing's forkserver): a real process, killed, waited
    on and exiting as `python -m atlas.cli` would, that starts in a fraction of a second
    instead of ~8 s.

    Environment variables that libraries read when they are imported (HF_HUB_CACHE,
    TQDM_DISABLE, PREFECT_HOME, ...) keep the values the test process had when the
    forkserver started: a test that changes one runs the command with `subprocess`."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None,
                 stdout: Path, stderr: Path | None = None, before=None,
                 script: Path | None = None):
        self.stdout, self.stderr = Path(stdout), Path(stderr or stdout)
        for path in {self.stdout, self.stderr}:
            path.write_text("")
        self.process = _forkserver().Process(
            target=_cli_child, args=(list(argv), dict(os.environ if env is None else env),
                                     str(self.stdout), str(self.stderr), before,
                                     None if script is None else str(script)))
        self.process.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.process.pid, sig)

    def kill(self) -> None:
        self.process.kill()

    def wait_for(self, path: Path, timeout: float = 300) -> None:
        """Wait until `path` exists (a commit point's marker), the process still running."""
        deadline = time.time() + timeout
        while not path.exists():
            assert self.poll() is None, f"it ended before {path.name}:\n{self.output()}"
            assert time.time() < deadline, f"it never reached {path.name}"
            time.sleep(0.05)

    def output(self) -> str:
        """What it wrote to stdout (and to stderr, where that is another file)."""
        parts = [self.stdout] + ([self.stderr] if self.stderr != self.stdout else [])
        return "".join(p.read_text() for p in parts)[-3000:]

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise subprocess.TimeoutExpired(["atlas", "(forked)"], timeout or 0)
        return self.process.exitcode


def run_cli(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
            before=None, tmp: Path | None = None, script: Path | None = None
            ) -> subprocess.CompletedProcess:
    """`atlas <argv>` (or `python <script> <argv>`) in a `CliProcess` until it ends: its exit
    status and output, as `subprocess.run(..., capture_output=True, text=True)` gives them."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        proc = CliProcess(argv, env=env, stdout=out, stderr=err, before=before, script=script)
        code = proc.wait(timeout)
        return subprocess.CompletedProcess(["atlas", *argv], code, out.read_text(),
                                           err.read_text())
