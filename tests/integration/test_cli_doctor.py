"""``doctor`` on a node laid out in a temporary directory: each check's verdict and the exit code."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from slurm_vgpu.adapters.slurm import slurmd_version
from slurm_vgpu.doctor import spank_built_for

from .cli_support import cli  # noqa: F401

GOLDEN_INVENTORY = Path(__file__).resolve().parents[1] / "golden" / "inventory" / "gpu01.json"


def build_spank_stub(directory: Path, version_number: str) -> Path:
    """A shared object with the plugin_version symbol SPANK_PLUGIN() defines."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build a stand-in SPANK plugin")
    source = directory / "stub.c"
    source.write_text(f'const char plugin_name[] = "slurm-vgpu";\nconst char plugin_type[] = "spank";\n'
                      f"const unsigned int plugin_version = {version_number};\n")
    plugin = directory / "slurm_vgpu.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(plugin), str(source)], check=True,
                   capture_output=True)
    return plugin


def slurmd_number() -> str:
    version = slurmd_version()
    if version is None:
        pytest.skip("slurmd is not installed")
    major, minor, micro = (int(p) for p in version.split("."))
    return hex(major << 16 | minor << 8 | micro)


@pytest.fixture
def node(tmp_path, cli):
    """A well-configured node: slurm.conf with our additions, plugstack include, run dir, sim GPUs."""
    etc = tmp_path / "etc"
    (etc / "plugstack.conf.d").mkdir(parents=True)
    plugin = build_spank_stub(tmp_path, slurmd_number())
    (etc / "plugstack.conf").write_text(f"include {etc}/plugstack.conf.d/*.conf\n")
    (etc / "plugstack.conf.d" / "slurm-vgpu.conf").write_text(f"required {plugin} \n")
    (etc / "slurm.conf").write_text(
        f"ClusterName=t\nInclude {etc}/vgpu.conf\nPlugStackConfig={etc}/plugstack.conf\n")
    (etc / "vgpu.conf").write_text("Prolog=/bin/true\nEpilog=/bin/true\nPrologFlags=Alloc,Contain\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    run_dir.chmod(0o755)
    cli.config.write_text(f"SlurmConf={etc}/slurm.conf\nMpsControl=/bin/true\nRunDir={run_dir}\n"
                          f"Inventory={GOLDEN_INVENTORY}\n")
    return {"etc": etc, "run_dir": run_dir, "plugin": plugin, "tmp": tmp_path}


def statuses(cli) -> tuple[int, dict[str, dict]]:
    result = cli("doctor", "--json")
    return result.exit_code, {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_a_ready_node_passes_every_check(cli, node):
    code, checks = statuses(cli)
    assert {name: c["status"] for name, c in checks.items()} == {
        "slurm": "OK", "plugstack": "OK", "spank": "OK", "prolog": "OK", "preemption": "OK", "mps": "OK",
        "gpus": "OK", "speed": "OK", "run-dir": "OK", "database": "OK"}
    assert code == 0
    assert "2 GPUs" in checks["gpus"]["message"] and checks["speed"]["message"] == "h100 3.2 (datasheet)"
    assert spank_built_for(node["plugin"]) == slurmd_version()


def test_each_broken_piece_is_a_fail_with_a_fix_and_exit_1(cli, node):
    build_spank_stub(node["tmp"], "0x170b00")  # built for Slurm 23.11.0
    (node["etc"] / "vgpu.conf").write_text("Prolog=/nonexistent/prolog\nEpilog=/bin/true\n")
    node["run_dir"].chmod(0o777)
    code, checks = statuses(cli)
    assert code == 1
    assert checks["spank"]["status"] == "FAIL" and "built for Slurm 23.11.0" in checks["spank"]["message"]
    assert checks["prolog"]["status"] == "FAIL" and "/nonexistent/prolog" in checks["prolog"]["message"]
    assert checks["run-dir"]["status"] == "FAIL" and checks["run-dir"]["fix"] == f"chmod go-w {node['run_dir']}"
    assert checks["mps"]["status"] == "OK"
    human = cli("doctor")
    assert human.exit_code == 1
    assert any(line.startswith("FAIL run-dir") and "-> chmod go-w" in line for line in human.stdout.splitlines())


def test_missing_plugstack_line_and_optional_entry(cli, node):
    entry = node["etc"] / "plugstack.conf.d" / "slurm-vgpu.conf"
    entry.write_text(f"optional {node['plugin']}\n")
    assert statuses(cli)[1]["plugstack"]["status"] == "WARN"
    entry.unlink()
    code, checks = statuses(cli)
    assert code == 1 and checks["plugstack"]["status"] == "FAIL"
    assert "render plugstack.conf.d/slurm-vgpu.conf" in checks["plugstack"]["fix"]


def test_unreachable_database_and_missing_run_dir_fail(cli, node):
    node["run_dir"].rmdir()
    cli.config.write_text(cli.config.read_text() + "DatabaseUrl=postgresql+psycopg://postgres@127.0.0.1:1/x\n")
    cli.database_url = ""  # the config's DatabaseUrl applies
    code, checks = statuses(cli)
    assert code == 1
    assert checks["run-dir"]["status"] == "FAIL" and checks["run-dir"]["fix"].startswith("install -d -o root")
    assert checks["database"]["status"] == "FAIL" and "127.0.0.1:1/x" in checks["database"]["message"]


def test_a_gpu_model_of_no_known_speed_is_a_warning_that_says_what_to_add(cli, node):
    doc = json.loads(GOLDEN_INVENTORY.read_text())
    doc["gpus"][1].update(name="NVIDIA B200", model="b200")  # no datasheet entry yet
    inventory = node["tmp"] / "gpu01.json"
    inventory.write_text(json.dumps(doc))
    cli.config.write_text(cli.config.read_text().replace(str(GOLDEN_INVENTORY), str(inventory)))
    code, checks = statuses(cli)
    assert code == 0 and checks["speed"]["status"] == "WARN"
    assert "b200 has no known speed and counts as an A100" in checks["speed"]["message"]
    assert checks["speed"]["fix"] == "add GpuSpeed=b200:<throughput relative to an A100> to slurm-vgpu.conf"
    cli.config.write_text(cli.config.read_text() + "GpuSpeed=b200:7.2,h100:3.0\n")
    code, checks = statuses(cli)
    assert checks["speed"]["status"] == "OK"
    assert checks["speed"]["message"] == "b200 7.2 (GpuSpeed), h100 3 (GpuSpeed)"


def test_preemption_asked_for_needs_slurms_preempt_mode_requeue(cli, node):
    assert statuses(cli)[1]["preemption"]["message"] == "off (PreemptBestEffort=no)"
    cli.config.write_text(cli.config.read_text() + "PreemptBestEffort=yes\n")
    code, checks = statuses(cli)
    assert code == 1 and checks["preemption"]["status"] == "FAIL"
    assert "PreemptMode is OFF" in checks["preemption"]["message"]
    assert "PreemptType=preempt/qos and PreemptMode=REQUEUE" in checks["preemption"]["fix"]
    vgpu_conf = node["etc"] / "vgpu.conf"
    vgpu_conf.write_text(vgpu_conf.read_text() + "PreemptMode=REQUEUE\n")
    assert "Slurm refuses this slurm.conf" in statuses(cli)[1]["preemption"]["message"]
    vgpu_conf.write_text(vgpu_conf.read_text() + "PreemptType=preempt/qos\n")
    code, checks = statuses(cli)
    assert code == 0 and checks["preemption"]["status"] == "OK"
    assert checks["preemption"]["message"] == ("best-effort slices requeued for latency ones after 30s "
                                               "(PreemptType=preempt/qos, PreemptMode=REQUEUE)")
