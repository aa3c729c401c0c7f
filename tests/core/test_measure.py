"""Peak-memory readings of real processes, and sizes on disk."""

import os
import subprocess
import sys
import time

from core.measure import process_peak_memory, size_on_disk


def test_peak_memory_follows_what_a_process_touched():
    code = "b = bytearray(300 * 1024 * 1024); import time; time.sleep(30)"
    small = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    big = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (process_peak_memory(big.pid) or 0) < 300 * 1024 * 1024:
            time.sleep(0.2)
        assert process_peak_memory(big.pid) >= 300 * 1024 * 1024
        assert process_peak_memory(small.pid) < 100 * 1024 * 1024
        assert process_peak_memory(os.getpid()) > 0
    finally:
        small.kill(), big.kill()
        small.wait(), big.wait()
    assert process_peak_memory(big.pid) is None  # gone


def test_size_on_disk_counts_files_and_folders(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 5)
    assert size_on_disk(tmp_path / "a") == 10
    assert size_on_disk(tmp_path / "d") == 5
    assert size_on_disk(tmp_path / "a", tmp_path / "d", tmp_path / "missing") == 15
