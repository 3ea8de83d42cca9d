"""Python, job_submit.lua and the SPANK plugin's C agree on every case of tests/contract_cases.py.

job_submit.lua runs in a real Lua 5.1 (as slurmctld embeds it) with a stub ``slurm`` table; the C
cases run through a small driver compiled against spank/args.c and spank/slice.c.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from slurm_vgpu import contract, render
from slurm_vgpu.adapters.gpus import GpuRecord
from slurm_vgpu.contract import DEFAULT_CLASS, UNPLACED, VgpuRequest, parse_request
from slurm_vgpu.node import slice as slice_file
from slurm_vgpu.policy import SloClass
from slurm_vgpu.resources import MIGRATIONS, SPANK
from tests.contract_cases import CLASSES, COMMENTS, PROFILES, ROUND_TRIPS, SIZES, SLOS, SUBMITS

LUA = shutil.which("lua5.1")
CC = shutil.which("cc") or shutil.which("gcc")
HAS_SPANK_H = Path("/usr/include/slurm/spank.h").exists()


def python_size(text: str) -> int | None:
    try:
        return contract.memory_mib(text)
    except ValueError as exc:
        assert str(exc) == contract.SIZE_HINT
        return None


# --- (a) the Python contract ---

@pytest.mark.parametrize("value, valid", CLASSES)
def test_python_classes(value, valid):
    assert (contract.class_error(value) is None) == valid
    if not valid:
        assert contract.class_error(value).startswith("write --vgpu-class=")


@pytest.mark.parametrize("value, mib", SIZES)
def test_python_sizes(value, mib):
    assert python_size(value) == mib


def python_slo(text: str) -> tuple[float, float | None] | None:
    try:
        return contract.slo_target(text)
    except ValueError as exc:
        assert str(exc).endswith(contract.SLO_HINT)
        return None


@pytest.mark.parametrize("value, valid", PROFILES)
def test_python_profiles(value, valid):
    assert (contract.profile_error(value) is None) == valid


@pytest.mark.parametrize("value, target", SLOS)
def test_python_slos(value, target):
    assert python_slo(value) == target


@pytest.mark.parametrize("comment, fields", COMMENTS)
def test_python_reads_each_comment(comment, fields):
    assert parse_request(comment) == (VgpuRequest(**fields) if fields is not None else None)


@pytest.mark.parametrize("fields, comment", ROUND_TRIPS)
def test_python_comment_round_trips(fields, comment):
    request = VgpuRequest(**fields)
    assert request.comment() == comment
    back = {**fields, "wait": fields["wait"].replace('"', "'")} if fields.get("wait") else fields
    assert parse_request(comment) == VgpuRequest(**back)


def test_the_vocabularies_elsewhere_are_the_contracts():
    assert tuple(c.value for c in SloClass) == contract.SLO_CLASSES
    assert DEFAULT_CLASS in contract.SLO_CLASSES
    assert set(contract.PLACEMENT_DECIDES) <= set(contract.REQUEST_STATES)
    assert set(contract.ACTIVE_STATES) <= set(contract.PLACEMENT_STATES)


def test_the_first_migrations_checks_list_the_contracts_classes_and_states():
    """Migrations are history and stay as written; the schema they made must still hold the contract."""
    source = (MIGRATIONS / "versions" / "0001_initial_schema.py").read_text()

    def listed(column: str) -> tuple[str, ...]:
        (values,) = re.findall(rf'"{column} IN \(([^)]*)\)", name=op.f\(\'ck_placements_', source)
        return ast.literal_eval(f"({values},)")

    assert listed("slo_class") == contract.SLO_CLASSES
    assert listed("state") == contract.PLACEMENT_STATES


# --- (b) job_submit.lua ---

def lua_string(text: str) -> str:
    """A Lua 5.1 string literal: printable ASCII as is, everything else as \\ddd."""
    return '"' + "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else f"\\{ord(c):03d}"
                         for c in text) + '"'


def lua_value(value) -> str:
    return "nil" if value is None else str(value) if isinstance(value, int) else lua_string(value)


LUA_DRIVER = """
slurm = { SUCCESS = 0, ERROR = -1, ESLURM_ACCESS_DENIED = 2002, log_info = function() end,
          log_user = function(fmt, ...) MESSAGE = string.format(fmt, ...) end }
dofile(%(script)s)
local function hex(s)
    return (string.gsub(s or "", ".", function(c) return string.format("%%02x", string.byte(c)) end))
end
for _, case in ipairs({ %(submits)s }) do
    MESSAGE = ""
    local env = {}
    if case[2] ~= nil then table.insert(env, "VGPU_CLASS=" .. case[2]) end
    if case[3] ~= nil then table.insert(env, "VGPU_MEM=" .. case[3]) end
    if case[6] ~= nil then table.insert(env, "VGPU_PROFILE=" .. case[6]) end
    if case[7] ~= nil then table.insert(env, "VGPU_SLO=" .. case[7]) end
    local job = { tres_per_node = case[1], spank_job_env = env, req_nodes = case[4], begin_time = case[5] }
    local rc = slurm_job_submit(job, {}, 1000)
    print("submit " .. rc .. " " .. hex(job.admin_comment) .. " " .. hex(MESSAGE))
end
for _, comment in ipairs({ %(comments)s }) do
    MESSAGE = ""
    local rc = slurm_job_modify({ req_nodes = "n9" }, { job_id = 7, admin_comment = comment }, {}, 1000)
    print("modify " .. rc .. " " .. hex(MESSAGE))
end
"""


def submits() -> list[tuple]:
    """SUBMITS, then every class and size case submitted as --gres=vgpu:30, every profile and target
    case as --gres=vgpu:60 with a good target or profile; each case of 7 fields."""
    cases = ([*SUBMITS] + [("gres:vgpu:30", value, None, None, None) for value, _ in CLASSES]
             + [("gres:vgpu:30", None, value, None, None) for value, _ in SIZES]
             + [("gres:vgpu:60", None, None, None, None, value, "p99:50ms") for value, _ in PROFILES]
             + [("gres:vgpu:60", None, None, None, None, "resnet50", value) for value, _ in SLOS])
    return [(*case, *(None,) * (7 - len(case))) for case in cases]


def expected_submit(gres: str, vgpu_class: str | None, vgpu_mem: str | None, nodelist: str | None,
                    begin: int | None, profile: str | None, slo: str | None) -> tuple[str, str]:
    """('ok', the comment) or ('refused', the hint the message must hold), by the Python contract."""
    if vgpu_class is not None and contract.class_error(vgpu_class):
        return "refused", contract.class_error(vgpu_class)
    memory = None
    if vgpu_mem is not None:
        memory = python_size(vgpu_mem)
        if memory is None:
            return "refused", contract.SIZE_HINT
    if profile is not None and contract.profile_error(profile):
        return "refused", contract.PROFILE_HINT
    if slo is not None and python_slo(slo) is None:
        return "refused", contract.SLO_HINT
    if (profile is None) != (slo is None):
        return "refused", contract.TARGET_PAIR_HINT
    name, rest = re.fullmatch(r"gres[:/](v?gpu)(.*)", gres).groups()
    fields = rest.split(":")[1:]
    count = int(fields[-1]) if fields else 1
    model = fields[0] if len(fields) == 2 else None
    if name == "gpu":
        if not 1 <= count <= contract.WHOLE_GPUS_MAX:
            return "refused", f"write --gres=gpu:N or --gpus=N with 1 <= N <= {contract.WHOLE_GPUS_MAX}"
        if profile is not None:
            return "refused", contract.TARGET_SLICE_HINT
        request = VgpuRequest(UNPLACED, contract.SHARE_MAX, vgpu_class or DEFAULT_CLASS, model=model, gpus=count,
                              begin=begin, nodelist=nodelist)
    else:
        request = VgpuRequest(UNPLACED, count, vgpu_class or DEFAULT_CLASS, memory, model, begin=begin,
                              nodelist=nodelist, profile=profile, slo=slo)
    return "ok", request.comment()


@pytest.fixture(scope="module")
def lua_results(tmp_path_factory):
    if LUA is None:
        pytest.skip("lua5.1 is not installed (scripts/setup.sh installs it)")
    directory = tmp_path_factory.mktemp("lua")
    gpu = GpuRecord(index=0, minor=0, uuid="GPU-1", name="NVIDIA H100", model="h100", sm_count=132,
                    memory_mib=2 ** 52, compute_capability="9.0")
    script = directory / "job_submit.lua"
    script.write_text(render.job_submit_lua([render.NodeSpec("n1", (gpu,))]))
    rows = ", ".join("{ " + ", ".join(lua_value(v) for v in case) + " }" for case in submits())
    comments = ", ".join(lua_string(c) for c, _ in COMMENTS + [(c, None) for _, c in ROUND_TRIPS])
    driver = directory / "driver.lua"
    driver.write_text(LUA_DRIVER % {"script": lua_string(str(script)), "submits": rows, "comments": comments})
    out = subprocess.run([LUA, str(driver)], capture_output=True, text=True, check=True).stdout.splitlines()
    decode = lambda h: bytes.fromhex(h).decode(errors="replace")  # noqa: E731 (a refused name may not be UTF-8)
    submitted = [(int(rc), decode(comment), decode(message))
                 for kind, rc, comment, message in (line.split(" ") for line in out if line.startswith("submit "))]
    modified = [(int(rc), decode(message))
                for kind, rc, message in (line.split(" ") for line in out if line.startswith("modify "))]
    return submitted, modified


@pytest.mark.parametrize("index, case", list(enumerate(submits())), ids=[repr(c) for c in submits()])
def test_lua_submit_writes_the_comment_python_writes(lua_results, index, case):
    rc, comment, message = lua_results[0][index]
    outcome, expected = expected_submit(*case)
    if outcome == "ok":
        assert (rc, comment) == (0, expected), message
        assert parse_request(comment) is not None
    else:
        assert rc != 0 and comment == "", f"job_submit.lua took {case}"
        assert expected in message and expected.startswith("write "), message


@pytest.mark.parametrize("index, comment", list(enumerate(c for c, _ in COMMENTS + [(c, f) for f, c in ROUND_TRIPS])),
                         ids=[repr(c) for c, _ in COMMENTS + [(c, f) for f, c in ROUND_TRIPS]])
def test_lua_modify_reads_the_comment_as_python_does(lua_results, index, comment):
    """A user may change where or when a job runs only when Python reads no request the placement
    still decides for (none at all, or one that ended)."""
    rc, message = lua_results[1][index]
    request = parse_request(comment)
    decides = request is not None and request.state in contract.PLACEMENT_DECIDES
    assert (rc != 0) == decides, (comment, message)
    if decides:
        assert "cancel and resubmit" in message


# --- (c) the SPANK plugin's C ---

C_DRIVER = r"""
#include <stdio.h>
#include <string.h>
#include "common.h"

void slurm_error(const char *format, ...) { (void)format; }
void slurm_info(const char *format, ...) { (void)format; }
void slurm_debug(const char *format, ...) { (void)format; }

/* Each argument: "c:VALUE" (a class), "s:VALUE" (a size), "p:VALUE" (a workload name), "o:VALUE" (a
 * latency target) or "f:DIR:JOBID" (a slice file). */
int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *value = argv[i] + 2, *hint = NULL;
		unsigned long long mib = 0;
		struct slice slice;
		unsigned int job_id;
		char dir[256];

		if (argv[i][0] == 'c') {
			hint = class_check(value);
		} else if (argv[i][0] == 'p') {
			hint = profile_check(value);
		} else if (argv[i][0] == 'o') {
			hint = slo_check(value);
		} else if (argv[i][0] == 's') {
			hint = memory_parse(value, &mib);
		} else {
			sscanf(value, "%255[^:]:%u", dir, &job_id);
			printf("%d", slice_read(dir, job_id, &slice));
			for (size_t v = 0; v < slice.nvars; v++)
				printf("\t%s=%s", slice.vars[v].name, slice.vars[v].value);
			for (size_t r = 0; r < slice.nallow; r++)
				printf("\t" SLICE_DEVICE_ALLOW "=%s", slice.allow[r]);
			for (size_t r = 0; r < slice.ndeny; r++)
				printf("\t" SLICE_DEVICE_DENY "=%s", slice.deny[r]);
			printf("\n");
			continue;
		}
		if (hint)
			printf("ERR %s\n", hint);
		else
			printf("OK %llu\n", mib);
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def c_driver(tmp_path_factory):
    if CC is None or not HAS_SPANK_H:
        pytest.skip("no C compiler or no slurm/spank.h (libslurm-dev)")
    directory = tmp_path_factory.mktemp("spank")
    (directory / "driver.c").write_text(C_DRIVER)
    binary = directory / "driver"
    subprocess.run([CC, "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{SPANK}", "-o", str(binary),
                    str(directory / "driver.c"), str(SPANK / "args.c"), str(SPANK / "slice.c")],
                   check=True, capture_output=True, text=True)

    def run(*args: str) -> list[str]:
        return subprocess.run([str(binary), *args], capture_output=True, text=True, check=True).stdout.splitlines()
    return run


def test_c_agrees_on_every_class(c_driver):
    out = c_driver(*(f"c:{value}" for value, _ in CLASSES))
    assert out == ["OK 0" if valid else f"ERR {contract.CLASS_HINT}" for _, valid in CLASSES]


def test_c_agrees_on_every_profile_name(c_driver):
    out = c_driver(*(f"p:{value}" for value, _ in PROFILES))
    assert out == ["OK 0" if valid else f"ERR {contract.PROFILE_HINT}" for _, valid in PROFILES]


def test_c_agrees_on_every_target(c_driver):
    out = c_driver(*(f"o:{value}" for value, _ in SLOS))
    assert out == ["OK 0" if target else f"ERR {contract.SLO_HINT}" for _, target in SLOS]


def test_c_agrees_on_every_size(c_driver):
    out = c_driver(*(f"s:{value}" for value, _ in SIZES))
    assert out == [f"OK {python_size(value)}" if mib else f"ERR {contract.SIZE_HINT}" for value, mib in SIZES]


@pytest.mark.skipif(os.geteuid() != 0, reason="the plugin trusts only a root-owned slice file")
def test_c_reads_the_slice_file_python_writes(c_driver, tmp_path):
    written = slice_file.Slice(job_id=42, gpu_uuid="GPU-1", gpu_minor=1, share=30, memory_mib=8192,
                               pipe_dir=Path("/run/slurm-vgpu/mps/GPU-1/pipe"),
                               log_dir=Path("/run/slurm-vgpu/mps/GPU-1/log"), placement_id=7)
    text = slice_file.render(written, node_minors=[0, 1, 2], uvm_major=508)
    slice_file.write(tmp_path, 42, text)
    (line,) = c_driver(f"f:{tmp_path}:42")
    assert line.split("\t") == ["0", *(x for x in text.splitlines() if not x.startswith("#"))]
    assert slice_file.placement_of(tmp_path, 42) == 7
    assert {x.split("=", 1)[0] for x in text.splitlines()[1:]} <= {*contract.SLICE_VARS, contract.DEVICE_ALLOW,
                                                                    contract.DEVICE_DENY}
    slice_file.write(tmp_path, 43, text + "LD_PRELOAD=/tmp/x.so\n")
    (line,) = c_driver(f"f:{tmp_path}:43")
    assert line.startswith("-1")


def test_python_lua_and_c_name_the_same_size_units():
    lua = render.job_submit_lua([])
    assert f'local SIZE_PATTERN = "^(%d+)([{"".join(contract.SIZE_UNITS_KIB)}]?)I?B?$"' in lua
    header = (SPANK / "contract.h").read_text()
    assert all(f"{{ '{unit}', {kib}ULL }}" in header for unit, kib in contract.SIZE_UNITS_KIB.items())
    assert asdict(VgpuRequest(UNPLACED, 1, DEFAULT_CLASS)).keys() == contract.COMMENT_KEYS.keys()
