"""slurm-vgpu.conf: Slurm-style keys, and a bad value refused at load with its file, line and fix."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_vgpu.cli import main
from slurm_vgpu.config import KEYS, Config, ConfigError, parse, render


def test_placement_keys_round_trip_through_render():
    config = parse("Policy=fgd\nWorkloadRefresh=60\nCycleInterval=0.5\nPlaceBatch=4\n")
    assert (config.policy, config.workload_refresh, config.cycle_interval, config.place_batch) == \
        ("fgd", 60.0, 0.5, 4)
    assert parse(render(config)) == config


def test_an_unknown_policy_is_refused_at_load_naming_the_line_and_the_choices():
    with pytest.raises(ConfigError, match=r"site.conf:2: Policy: 'tetris' is not a policy; choose one of "
                                          r"random, first-fit, best-fit, fgd, ours"):
        parse("CycleInterval=1\nPolicy=tetris\n", "site.conf")


def test_the_default_class_is_one_of_the_classes_and_reaches_job_submit_lua(tmp_path):
    assert Config().default_class == "throughput"
    assert parse("DefaultClass=best-effort\n").default_class == "best-effort"
    with pytest.raises(ConfigError, match=r"site.conf:1: DefaultClass: 'fast' is not an SLO class; choose one of "
                                          r"latency, throughput, best-effort$"):
        parse("DefaultClass=fast\n", "site.conf")
    conf = tmp_path / "slurm-vgpu.conf"
    conf.write_text("DefaultClass=latency\n")
    inventory = Path(__file__).resolve().parents[1] / "golden" / "inventory"
    result = CliRunner().invoke(main, ["--config", str(conf), "render", "job_submit.lua",
                                       *(a for p in sorted(inventory.glob("*.json")) for a in ("--inventory", str(p)))])
    assert result.exit_code == 0, result.output
    assert 'local DEFAULT_CLASS = "latency"' in result.stdout


def test_a_refresh_that_is_not_a_number_is_refused():
    with pytest.raises(ConfigError, match="site.conf:1: WorkloadRefresh: 'soon' is not valid"):
        parse("WorkloadRefresh=soon\n", "site.conf")


def test_a_place_batch_below_one_is_refused():
    with pytest.raises(ConfigError, match="site.conf:1: PlaceBatch: 0 decisions per write is too few; "
                                          "give 1 or more"):
        parse("PlaceBatch=0\n", "site.conf")


def test_mps_max_clients_is_each_gpus_own_limit_unless_lowered_and_never_above_what_mps_takes():
    assert Config().mps_max_clients is None and parse("MpsMaxClients=20\n").mps_max_clients == 20
    for too_many in (49, 0):
        with pytest.raises(ConfigError, match=rf"^site.conf:1: MpsMaxClients: {too_many} is not 1 to 48: an MPS "
                                              r"server takes at most 48 clients per GPU \(16 below compute "
                                              r"capability 7.0, whatever this key says\); give 1 to 48, or leave "
                                              r"the key out for each GPU's own limit$"):
            parse(f"MpsMaxClients={too_many}\n", "site.conf")


def test_an_mps_health_timeout_of_no_time_is_refused():
    assert parse("MpsHealthTimeout=2.5\n").mps_health_timeout == 2.5
    with pytest.raises(ConfigError, match="site.conf:1: MpsHealthTimeout: 0.0 seconds leaves no time to answer; "
                                          "give a number of seconds above 0"):
        parse("MpsHealthTimeout=0\n", "site.conf")


def test_an_unknown_key_is_refused_naming_the_file_line_and_nearest_key():
    """As the SPANK plugin refuses an unknown argument: a misspelt key must not leave its default on."""
    with pytest.raises(ConfigError, match=r"^slurm-vgpu.conf:3: unknown key 'SloGaurd'; did you mean 'SloGuard'\?$"):
        parse("# site settings\nPolicy=ours\nSloGaurd=no\n")


def test_a_key_near_no_other_is_refused_with_every_key():
    with pytest.raises(ConfigError, match=r"site.conf:1: unknown key 'Frobnicate'; the keys are DatabaseUrl, .*"
                                          r"GuardThroughputRun, OperatorUids$"):
        parse("Frobnicate=1\n", "site.conf")


def test_render_writes_every_key_it_can_read_back():
    config = Config(node_name="gpu01", reference_model="a100", hpc_job_mapping_dir="/run/map/%n", mps_max_clients=20,
                    gpu_speed=(("h200", 3.4), ("l4", 0.39)), speed_workload="resnet50", class_priority=(("latency", 10000), ("best-effort", -500)))
    text = render(config)
    assert {line.split("=", 1)[0] for line in text.splitlines()[1:]} == set(KEYS) - {"SlurmConf"}
    assert parse(text) == config


@pytest.fixture
def misspelt(tmp_path) -> Path:
    path = tmp_path / "slurm-vgpu.conf"
    path.write_text("DatabaseUrl=postgresql://postgres@127.0.0.1:1/none\nHeartbeatTimeout=30\nSloGaurd=no\n")
    return path


@pytest.mark.parametrize("command", ["--config {} gpus", "--config {} doctor", "--config {} placement run --once",
                                     "placement run --once --config {}", "agent run --config {}"])
def test_every_command_refuses_a_file_with_an_unknown_key_as_bad_input(misspelt, command):
    result = CliRunner().invoke(main, command.format(misspelt).split(), env={"SLURM_VGPU_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert f"{misspelt}:3: unknown key 'SloGaurd'; did you mean 'SloGuard'?" in result.stderr


def test_the_prolog_fails_on_a_file_with_an_unknown_key_and_says_why_in_slurmds_log(misspelt):
    """slurmd logs a failed prolog's stderr; a non-zero exit drains the node instead of starting the job
    on defaults the admin did not choose."""
    result = subprocess.run([sys.executable, "-m", "slurm_vgpu.node", "prolog", "--config", str(misspelt)],
                            env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_JOB_UID": "1000"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"prolog of job 7: {misspelt}:3: unknown key 'SloGaurd'; did you mean 'SloGuard'?" in result.stderr


def test_the_standalone_check_exits_2_with_the_first_error(misspelt):
    """What the Ansible role runs on the machine that runs the playbook, from the checkout."""
    check = [sys.executable, "-m", "slurm_vgpu.config"]
    bad = subprocess.run([*check, str(misspelt)], capture_output=True, text=True, timeout=60)
    assert (bad.returncode, bad.stderr) == (2, f"{misspelt}:3: unknown key 'SloGaurd'; did you mean 'SloGuard'?\n")
    good = subprocess.run([*check, "-"], input="PlaceBatch=4\n", capture_output=True, text=True, timeout=60)
    assert (good.returncode, good.stderr) == (0, "")


def test_gpu_speeds_read_as_model_speed_pairs_and_a_malformed_one_says_what_to_write():
    assert parse("GpuSpeed=H200:3.4, l4:0.39\n").gpu_speeds == {"h200": 3.4, "l4": 0.39}
    for bad in ("h200", "h200:fast", "h200:0", ":3", "h200:inf"):
        with pytest.raises(ConfigError, match=r"^slurm-vgpu.conf:1: GpuSpeed: .* is not model:speed \(each model's "
                                              r"throughput relative to an A100's, above 0\); write e.g. GpuSpeed=h200:3.4,l4:0.39$"):
            parse(f"GpuSpeed={bad}\n")


def test_class_priorities_name_classes_with_whole_numbers():
    assert parse("ClassPriority=Latency:10000,best-effort:-10000\n").class_priorities == {
        "latency": 10000, "best-effort": -10000}
    for bad in ("latency", "urgent:5", "latency:1.5"):
        with pytest.raises(ConfigError, match=r"ClassPriority: .* is not class:weight \(a class of latency, throughput, "
                                              r"best-effort and a whole number\); write e.g. ClassPriority=latency:10000"):
            parse(f"ClassPriority={bad}\n")


def test_a_speed_workload_must_be_a_workload_name():
    from slurm_vgpu.config import ConfigError, parse

    assert parse("SpeedWorkload=resnet50\n", "f").speed_workload == "resnet50"
    with pytest.raises(ConfigError, match="f:1: SpeedWorkload: 'res net' is not a workload name"):
        parse("SpeedWorkload=res net\n", "f")


def test_measured_speeds_are_on_the_a100_scale():
    from slurm_vgpu.catalog import measured_speeds, speed_of

    assert measured_speeds({"a100": 100.0, "h100": 300.0, "t4": 20.0}) == {"a100": 1.0, "h100": 3.0, "t4": 0.2}
    assert measured_speeds({"h100": 500.0, "t4": 50.0}) == {"h100": 3.2, "t4": 0.32}  # on the h100's 3.2
    assert measured_speeds({"b200": 500.0}, {"b200": 5.0}) == {"b200": 5.0}  # on the site's GpuSpeed
    assert measured_speeds({"b200": 500.0}) == {}  # nothing to anchor on
    assert speed_of("h100", {"h100": 3.0}, {"h100": 2.9}) == (2.9, "profile")
