import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_distributed_training_runs(norm):
    """Two gloo processes on loopback (started as torchrun would: RANK, WORLD_SIZE, MASTER_*) train a few steps."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = [sys.executable, str(ROOT / "examples" / "train_ddp.py"), "--norm", norm, "--steps", "4"]
    procs = []
    for rank in range(2):
        env = os.environ | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                script,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outputs[0][1][-3000:] + outputs[1][1][-3000:]
    out = outputs[0][0]
    match = re.search(r"held-out accuracy ([\d.]+)%", out)
    assert match and 0 <= float(match.group(1)) <= 100
    losses = [float(v) for v in re.findall(r"loss ([\d.]+)", out)]
    assert losses and all(v == v and v < 10 for v in losses)  # finite and sane
