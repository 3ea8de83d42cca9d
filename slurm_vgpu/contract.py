"""The facts that cross a process or a language, each stated once.

job_submit.lua (Lua, inside slurmctld), the SPANK plugin (C, inside sbatch, srun and slurmstepd)
and the Python components all speak these. ``slurm-vgpu render`` writes them into job_submit.lua
and into ``spank/contract.h``; tests/unit/test_contract.py runs one table of cases through the
three languages. Pure and standard library only: the prolog and the config checker import it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# --- SLO classes: what users type after --vgpu-class. ---

LATENCY = "latency"
THROUGHPUT = "throughput"
BEST_EFFORT = "best-effort"
SLO_CLASSES = (LATENCY, THROUGHPUT, BEST_EFFORT)
# The class of a job that names none; a site changes it with DefaultClass= in slurm-vgpu.conf.
DEFAULT_CLASS = THROUGHPUT
CLASS_NAMES = ", ".join(SLO_CLASSES[:-1]) + " or " + SLO_CLASSES[-1]  # for help texts
CLASS_HINT = ("write " + ", ".join(f"--vgpu-class={c}" for c in SLO_CLASSES[:-1])
              + f" or --vgpu-class={SLO_CLASSES[-1]}")


def class_error(value: str) -> str | None:
    """None for a class, else what to write instead (names are case-sensitive)."""
    return None if value in SLO_CLASSES else CLASS_HINT


# --- The size grammar of --vgpu-mem. ---

# NUMBER[UNIT][i][B], case-insensitive: NUMBER is 1 to SIZE_MAX_DIGITS decimal digits, UNIT one of
# SIZE_UNITS_KIB (none: MiB, as Slurm's --mem); "i" and "B" change nothing (8G = 8Gi = 8GiB = 8GB).
# The size is rounded up to whole MiB and must come to at least 1 MiB (0 and 0K are refused).
SIZE_UNITS_KIB = {"K": 1, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}
SIZE_BARE_UNIT = "M"
SIZE_MAX_DIGITS = 9  # so that C computes any size in 64 bits
_UNITS = list(SIZE_UNITS_KIB)
SIZE_HINT = (f"write --vgpu-mem=SIZE as a whole number with an optional unit {', '.join(_UNITS[:-1])} or {_UNITS[-1]}, "
             "e.g. --vgpu-mem=8G or --vgpu-mem=512M")
_SIZE = re.compile(rf"([0-9]{{1,{SIZE_MAX_DIGITS}}})([{''.join(SIZE_UNITS_KIB)}]?)I?B?", re.IGNORECASE)


def memory_mib(text: str) -> int:
    """``8G`` -> 8192; ValueError saying what to write instead when ``text`` is not a size."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(SIZE_HINT)
    kib = int(match.group(1)) * SIZE_UNITS_KIB[(match.group(2) or SIZE_BARE_UNIT).upper()]
    mib = -(-kib // 1024)
    if mib < 1:
        raise ValueError(SIZE_HINT)
    return mib


def mps_size(mib: int) -> str:
    """A memory cap as MPS takes it (``set_device_pinned_mem_limit``, the slice file's variable)."""
    return f"{mib}M"


# --- A latency target: --vgpu-profile=NAME names a profiled workload (slurm-vgpu profile), and
# --vgpu-slo=p99:LATENCY[,rate:N/s] the target its slice is sized for. ---

# NAME: 1 to PROFILE_NAME_MAX ASCII letters, digits and PROFILE_NAME_PUNCTUATION, starting with a
# letter or digit.
PROFILE_NAME_MAX = 64
PROFILE_NAME_PUNCTUATION = "._-"
PROFILE_HINT = (f"write --vgpu-profile=NAME, a profiled workload: letters, digits, '.', '_' and '-' "
                f"(up to {PROFILE_NAME_MAX}), e.g. --vgpu-profile=resnet50")
# TARGET: comma-separated KEY:VALUE, each key once, p99 required. p99's value is NUMBER followed by a
# unit of SLO_LATENCY_UNITS_MS; rate's is NUMBER followed by SLO_RATE_UNIT. NUMBER is 1 to
# SLO_DIGITS_MAX digits, optionally "." and 1 to SLO_FRACTION_MAX digits, and above 0.
SLO_LATENCY_UNITS_MS = {"ms": 1, "s": 1000}
SLO_RATE_UNIT = "/s"
SLO_DIGITS_MAX = 9
SLO_FRACTION_MAX = 3
SLO_EXAMPLE = "p99:50ms,rate:200/s"
SLO_HINT = (f"write --vgpu-slo=p99:LATENCY[,rate:N/s], LATENCY a number with ms or s and N requests per second, "
            f"both above 0, e.g. --vgpu-slo={SLO_EXAMPLE}")
# A target is met from the workload's profile, by a slice: the two options come together, with
# --gres=vgpu:N, N the most of one GPU the chosen share may be.
TARGET_PAIR_HINT = ("write --vgpu-profile=NAME and --vgpu-slo=TARGET together (the target is met from the "
                    "workload's profile), or neither")
TARGET_SLICE_HINT = ("write --gres=vgpu:N with --vgpu-profile and --vgpu-slo (N% of one GPU: the most the sized "
                     "slice may take), not whole GPUs")
_PROFILE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9{re.escape(PROFILE_NAME_PUNCTUATION)}]{{0,{PROFILE_NAME_MAX - 1}}}")
_SLO_NUMBER = rf"([0-9]{{1,{SLO_DIGITS_MAX}}}(?:\.[0-9]{{1,{SLO_FRACTION_MAX}}})?)"
_SLO_LATENCY = re.compile(_SLO_NUMBER + f"({'|'.join(SLO_LATENCY_UNITS_MS)})")
_SLO_RATE = re.compile(_SLO_NUMBER + re.escape(SLO_RATE_UNIT))


def profile_error(name: str) -> str | None:
    """None for a workload name, else what to write instead."""
    return None if _PROFILE_NAME.fullmatch(name) else PROFILE_HINT


def slo_target(text: str) -> tuple[float, float | None]:
    """``p99:50ms,rate:200/s`` -> (50.0, 200.0); ValueError saying what is wrong and what to write."""
    values: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition(":")
        if not sep or key not in ("p99", "rate"):
            raise ValueError(f"{item!r} is not a target; {SLO_HINT}")
        if key in values:
            raise ValueError(f"{key} is given twice; {SLO_HINT}")
        values[key] = value
    if "p99" not in values:
        raise ValueError(f"a target needs its p99 latency; {SLO_HINT}")
    latency = _SLO_LATENCY.fullmatch(values["p99"])
    if latency is None:
        raise ValueError(f"p99:{values['p99']} is not a latency; {SLO_HINT}")
    p99_ms = float(latency.group(1)) * SLO_LATENCY_UNITS_MS[latency.group(2)]
    if p99_ms <= 0:
        raise ValueError(f"a p99 of 0 cannot be met; {SLO_HINT}")
    rate = None
    if "rate" in values:
        rate = per_second(values["rate"])
        if rate is None:
            raise ValueError(f"rate:{values['rate']} is not a rate above 0; {SLO_HINT}")
    return p99_ms, rate


def per_second(text: str) -> float | None:
    """``200/s`` -> 200.0 (requests per second, a target's rate); None when it is no rate above 0."""
    match = _SLO_RATE.fullmatch(text)
    return float(match.group(1)) if match and float(match.group(1)) > 0 else None


# --- How the SPANK plugin hands the options to job_submit.lua (spank_job_control_setenv). ---

SPANK_ENV_CLASS = "VGPU_CLASS"
SPANK_ENV_MEMORY = "VGPU_MEM"
SPANK_ENV_PROFILE = "VGPU_PROFILE"
SPANK_ENV_SLO = "VGPU_SLO"

# --- The admin_comment record: job_submit.lua writes it, the placement rewrites it. ---

UNPLACED = "unplaced"  # waits for the placement
PINNED = "pinned"  # the placement gave it a GPU in Slurm
FAILED = "failed"  # no GPU could ever serve it; cancelled, wait= says why
REQUEST_STATES = (UNPLACED, PINNED, FAILED)
# While a request is in one of these, the placement decides where and when the job runs:
# job_submit.lua's slurm_job_modify refuses a user's change of them.
PLACEMENT_DECIDES = (UNPLACED, PINNED)
# The record's keys, in the order written. Values never hold a space, except quoted ones
# (QUOTED_KEYS) which never hold a double quote (quote() turns it into a single one).
COMMENT_KEYS = {"state": "vgpu-state", "share": "share", "slo_class": "class", "memory_mib": "mem_mib",
                "model": "model", "gpus": "gpus", "profile": "profile", "slo": "slo", "begin": "begin",
                "nodelist": "nodelist", "gpu": "gpu", "wait": "wait"}
QUOTED_KEYS = ("wait", "agent")
SHARE_MAX = 100  # a share is a percentage of one GPU
# A job may ask for whole GPUs (--gres=gpu:N, --gpus=N) instead of a slice: up to this many, on one
# node, handed out natively (Slurm's gres/gpu, no MPS) on GPUs that carry no slice.
WHOLE_GPUS_MAX = 8
_KEY = re.compile(r"([a-z_-]+)=")
_WHOLE = re.compile(r"[0-9]+")


def quote(text: str) -> str:
    """A free-text value (why a job waits, what the agent did), safe inside the record."""
    return '"' + text.replace('"', "'") + '"'


def comment_fields(text: str) -> dict[str, str]:
    """The record's ``key=value`` fields (a later key wins). Fields are separated by spaces; a value
    is a run of non-spaces, or ``"..."`` up to the next double quote (to the end when none);
    words that are not ``key=`` are skipped."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        match = _KEY.match(text, i)
        if match is None:
            end = text.find(" ", i)
            i = len(text) if end < 0 else end
            continue
        start = match.end()
        if text.startswith('"', start):
            close = text.find('"', start + 1)
            close = len(text) if close < 0 else close
            fields[match.group(1)], i = text[start + 1:close], close + 1
        else:
            end = text.find(" ", start)
            end = len(text) if end < 0 else end
            fields[match.group(1)], i = text[start:end], end
    return fields


def _whole(value: str | None, low: int, high: int | None = None) -> int | None:
    if value is None or not _WHOLE.fullmatch(value):
        return None
    number = int(value)
    return number if number >= low and (high is None or number <= high) else None


@dataclass(frozen=True)
class VgpuRequest:
    """What job_submit.lua recorded in a job's admin_comment."""

    state: str  # one of REQUEST_STATES
    share: int
    slo_class: str
    memory_mib: int | None = None
    model: str | None = None
    gpus: int | None = None  # whole GPUs asked for (share is then SHARE_MAX); None: a slice
    gpu: str | None = None  # the GPU UUID once pinned (a job of several whole GPUs: their UUIDs, comma-separated)
    wait: str | None = None  # why it waits, as last told to the user
    begin: int | None = None  # the user's own --begin (epoch seconds), kept from submit
    nodelist: str | None = None  # the user's own --nodelist (a hostlist), kept from submit
    # --vgpu-profile and --vgpu-slo: the share is then the smallest measured one that meets the
    # target, ``share`` the most it may be
    profile: str | None = None
    slo: str | None = None

    def comment(self) -> str:
        parts = []
        for name, key in COMMENT_KEYS.items():
            value = getattr(self, name)
            if value is None or value == "":
                continue
            parts.append(f"{key}={quote(value) if key in QUOTED_KEYS else value}")
        return " ".join(parts)


def parse_request(admin_comment: str | None) -> VgpuRequest | None:
    """``vgpu-state=unplaced share=30 class=latency mem_mib=8192 model=h100`` -> VgpuRequest; None
    when the comment holds no request: no or an unknown vgpu-state, a share that is not 1..100,
    no or an unknown class, a mem_mib or begin that is not a whole number, a gpus that is not
    1..WHOLE_GPUS_MAX or comes with a share below 100 or a mem_mib, a profile or slo that is not
    one or comes without the other or with whole GPUs."""
    raw = comment_fields(admin_comment or "")
    value = {name: raw.get(key) for name, key in COMMENT_KEYS.items()}  # None: not in the record
    share = _whole(value["share"], 1, SHARE_MAX)
    memory = _whole(value["memory_mib"], 1)
    begin = _whole(value["begin"], 0)
    gpus = _whole(value["gpus"], 1, WHOLE_GPUS_MAX)
    if value["state"] not in REQUEST_STATES or share is None or value["slo_class"] not in SLO_CLASSES:
        return None
    if (memory is None and value["memory_mib"] is not None) or (begin is None and value["begin"] is not None):
        return None
    if value["gpus"] is not None and (gpus is None or share != SHARE_MAX or memory is not None):
        return None
    if (value["profile"] is None) != (value["slo"] is None) or (value["profile"] is not None and (
            gpus is not None or profile_error(value["profile"]) is not None or not _is_target(value["slo"]))):
        return None
    return VgpuRequest(state=value["state"], share=share, slo_class=value["slo_class"], memory_mib=memory,
                       model=value["model"] or None, gpus=gpus, gpu=value["gpu"] or None,
                       wait=value["wait"] or None, begin=begin, nodelist=value["nodelist"] or None,
                       profile=value["profile"], slo=value["slo"])


def _is_target(text: str) -> bool:
    try:
        slo_target(text)
    except ValueError:
        return False
    return True


# job_submit.lua holds a vgpu job by setting its begin time this far ahead (Slurm keeps it pending
# with Reason=BeginTime while priority, user holds and dependencies work as for any job); the pin
# sets StartTime=now, taking a pin back sets it this far ahead again.
HOLD_DAYS = 365

# --- Placement states in Postgres. ---

# placed: committed in Postgres; pinned: Slurm updated and released; running: prolog has set it up;
# released/failed: over. The first three hold capacity.
PLACEMENT_STATES = ("placed", "pinned", "running", "released", "failed")
ACTIVE_STATES = ("placed", "pinned", "running")

# --- The slice file: the prolog writes it, the SPANK plugin reads it (spank/slice.c). ---

RUN_DIR = "/run/slurm-vgpu"  # RunDir= by default
SLICE_DIR = "jobs"  # under RunDir: one file per job, named by its id
# The variables a slice file may set in a task; the plugin refuses any other key.
SLICE_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY",
              "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "SLURM_STEP_GRES")
DEVICE_ALLOW = "DEVICE_ALLOW"  # "c MAJOR:MINOR ACCESS": a device the task may open
DEVICE_DENY = "DEVICE_DENY"  # the same form: a device the task may not
SLICE_HEADER = "# slurm-vgpu slice of job {job_id}{placement}; written by the prolog, applied by the SPANK plugin"
_SLICE_PLACEMENT = re.compile(r"# slurm-vgpu slice of job [0-9]+ \(placement ([0-9]+)\)")


def slice_header(job_id: int, placement_id: int | None) -> str:
    """The first line; it names the placement the epilog releases."""
    placement = f" (placement {placement_id})" if placement_id is not None else ""
    return SLICE_HEADER.format(job_id=job_id, placement=placement)


def slice_placement(first_line: str) -> int | None:
    """The placement a slice file's first line names; None when it names none."""
    match = _SLICE_PLACEMENT.match(first_line)
    return int(match.group(1)) if match else None
