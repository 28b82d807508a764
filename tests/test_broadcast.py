"""`broadcast_bytes` refuses an oversized message with a user error (no assert, no hang)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import torch.distributed as dist
from minisgl_decl.errors import UserError
from minisgl_decl.runtime.distributed import GroupComm
dist.init_process_group("gloo", init_method="file://{store}", rank=0, world_size=1)
comm = GroupComm()
assert comm.broadcast_bytes(b"hello", max_len=8) == b"hello"
try:
    comm.broadcast_bytes(b"x" * 9, max_len=8)
except UserError as exc:
    print("USER ERROR:", exc)
dist.destroy_process_group()
"""


def test_oversized_broadcast_is_a_user_error(tmp_path: Path) -> None:
    code = SCRIPT.format(store=tmp_path / "store")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "USER ERROR: rank 0's message is 9 bytes; broadcast_bytes carries at most 8" in res.stdout
