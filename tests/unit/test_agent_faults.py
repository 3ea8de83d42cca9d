"""Fatal MPS faults are found in the GPU's MPS logs once, then set aside."""
from __future__ import annotations

import sys

from slurm_vgpu.mps import MpsControl
from slurm_vgpu.agent.faults import fatal_line, logged_fault, set_aside

FAKE = f"{sys.executable} -m slurm_vgpu_dev.fake_mps"


def test_fatal_lines_are_found_and_ordinary_ones_are_not():
    log = ("[2024-05-01 10:00:00.001 Server 4428] Client {PID: 4267, Context ID: 0} connected\n"
           "[2024-05-01 10:00:01.002 Server 4428] Receive command failed, assuming client exit\n")
    assert fatal_line(log) is None
    assert fatal_line(log + "[2024-05-01 10:00:02.003 Server 4428] FATAL exception on device 0\n").endswith(
        "FATAL exception on device 0")
    # The word in text the daemon echoes, or in a line no server wrote, is no fault.
    assert fatal_line("[2024-05-01 10:00:03.000 Control 4400] User did send fatal\n") is None
    assert fatal_line("fatal\n[2024-05-01 10:00:03.000 Other 4400] a fatal one\n") is None


def test_a_simulated_server_fault_is_reported_once(tmp_path):
    control = MpsControl(FAKE, "GPU-a", tmp_path / "pipe", tmp_path / "log")
    control.ensure_running()
    try:
        server = control.ensure_server(__import__("os").getuid())
        assert logged_fault(control.log_dir) is None
        control.command(f"simulate_fault {server}")
        path, line = logged_fault(control.log_dir)
        assert path.name == "server.log" and f"Server {server}]" in line
        kept = set_aside(path)
        assert logged_fault(control.log_dir) is None
        assert fatal_line(kept.read_text()) == line
    finally:
        control.quit()
