"""shotstream-train as 2 JAX processes x 4 CPU devices on localhost vs the reference: the same CLI as 1 process x 8.

The processes find each other through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID, as on a cluster; each run is stopped after half its steps and
resumed, and must give every step's loss of the uninterrupted single-process run.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.heavy

TINY = ["--config.video.shot_frames=21", "--config.shotstream.shot_latent_frames=6", "--config.data.toy_videos=3",
        "--config.train.ode_steps=2", "--config.train.critic_steps=1", "--config.train.checkpoint_every=100",
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--config.train.batch_size=4",
        "--progress=false", "--compilation_cache=none"]
TIMEOUT = 420  # a hang (hosts waiting on each other) fails the test instead of blocking CI


def _env(devices: int) -> dict:
    flags = (f"--xla_force_host_platform_device_count={devices} "
             # A loaded CI machine can keep a device thread from a collective for a while.
             "--xla_cpu_collective_call_terminate_timeout_seconds=400")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_"))}
    return dict(env, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, OMP_NUM_THREADS="1",
                PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _train(config: str, workdir, processes: int, *flags: str) -> None:
    """Run the CLI as `processes` JAX processes with 8 devices in all; fail on an error or a hang."""
    cmd = [sys.executable, "-m", "shotstream_jax.cli.train", f"--config=configs/toy/{config}.py",
           f"--workdir={workdir}", *TINY, *flags]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(processes):
        env = _env(8 // processes)
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
                       JAX_PROCESS_ID=str(i))
        log = open(f"{workdir}.{processes}.{i}.log", "a")
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for p, _ in procs:
            p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for p, _ in procs:
            p.kill()
        pytest.fail(f"{config} with {processes} processes did not finish in {TIMEOUT} s (hang?)")
    finally:
        for _, log in procs:
            log.close()
    for i, (p, _) in enumerate(procs):
        if p.returncode:
            with open(f"{workdir}.{processes}.{i}.log") as f:
                pytest.fail(f"process {i} of {processes} failed:\n{f.read()[-3000:]}")


def _losses(workdir) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {m["step"]: m["loss"] for m in map(json.loads, f)}


@pytest.mark.parametrize("stage", ["teacher", "dmd_intra"])
def test_two_processes_stop_resume_match_one(tmp_path, stage):
    steps = 4
    ref, multi = tmp_path / "one", tmp_path / "two"
    _train(stage, ref, 1, f"--config.train.steps={steps}")
    _train(stage, multi, 2, f"--config.train.steps={steps // 2}")
    assert sorted(_losses(multi)) == [1, 2]
    _train(stage, multi, 2, f"--config.train.steps={steps}")
    a, b = _losses(ref), _losses(multi)
    assert sorted(b) == list(range(1, steps + 1))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4, atol=1e-6)
    # The multi-host export is a model directory with the trained network.
    assert (multi / "export" / "config.json").exists() and (multi / "export" / "dit").is_dir()


def test_ode_pairs_two_processes_odd_dataset(tmp_path):
    """3 examples over 2 processes (global batches of 4 rows: the last wraps) finish, equal to 1 process."""
    ref, multi = tmp_path / "one", tmp_path / "two"
    _train("ode_pairs", ref, 1)
    _train("ode_pairs", multi, 2)
    names = sorted(os.listdir(ref / "ode_pairs"))
    assert names == ["000000.npz", "000001.npz", "000002.npz"]
    assert sorted(os.listdir(multi / "ode_pairs")) == names
    for n in names:
        with np.load(ref / "ode_pairs" / n) as a, np.load(multi / "ode_pairs" / n) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=f"{n}:{k}")
