"""One table of cases for the facts :mod:`slurm_vgpu.contract` owns. tests/unit/test_contract.py runs
every case through the Python contract, through job_submit.lua in a Lua interpreter, and through the
SPANK plugin's C, so the three agree case by case."""
from __future__ import annotations

# --vgpu-class VALUE -> whether it is a class
CLASSES = [
    ("latency", True), ("throughput", True), ("best-effort", True),
    ("LATENCY", False), ("Latency", False), ("", False), ("fast", False), ("best_effort", False),
    (" latency", False), ("latency ", False), ("latency,throughput", False),
]

# --vgpu-mem VALUE -> its size in MiB, or None when it is not a size
SIZES = [
    ("8G", 8192), ("512M", 512), ("512", 512), ("8g", 8192), ("8Gi", 8192), ("8GiB", 8192), ("8GB", 8192),
    ("8gib", 8192), ("1K", 1), ("1024K", 1), ("1025K", 2), ("2T", 2 * 1024 ** 2), ("08G", 8192), ("8B", 8),
    ("8iB", 8), ("999999999T", 999999999 * 1024 ** 2), ("999999999", 999999999),
    ("1.5G", None), ("0", None), ("0K", None), ("000", None), ("-1", None), ("-8G", None), ("+8G", None),
    ("8X", None), ("8KK", None), ("8GBi", None), ("8G4", None), ("", None), ("G", None), ("lots", None),
    ("eight", None), ("8 G", None), (" 8G", None), ("8G ", None), ("8G\n", None), ("1234567890M", None),
    ("12345678901M", None),
]

# admin_comment -> the request it records (VgpuRequest's fields), or None when it records none
COMMENTS = [
    ("vgpu-state=unplaced share=30 class=latency", dict(state="unplaced", share=30, slo_class="latency")),
    ("vgpu-state=unplaced share=30 class=latency mem_mib=8192 model=h100 begin=17 nodelist=n[1-2]",
     dict(state="unplaced", share=30, slo_class="latency", memory_mib=8192, model="h100", begin=17, nodelist="n[1-2]")),
    ('vgpu-state=pinned share=100 class=throughput gpu=GPU-1 wait="placing again"',
     dict(state="pinned", share=100, slo_class="throughput", gpu="GPU-1", wait="placing again")),
    ('vgpu-state=failed share=1 class=best-effort wait="was vgpu-state=unplaced, then no GPU"',
     dict(state="failed", share=1, slo_class="best-effort", wait="was vgpu-state=unplaced, then no GPU")),
    ('vgpu-state=pinned share=30 class=latency gpu=GPU-2 agent="frozen: vgpu-state=unplaced"',
     dict(state="pinned", share=30, slo_class="latency", gpu="GPU-2")),
    ("  vgpu-state=unplaced   share=30 class=latency  ", dict(state="unplaced", share=30, slo_class="latency")),
    ("note: vgpu-state=unplaced share=30 class=latency", dict(state="unplaced", share=30, slo_class="latency")),
    ("vgpu-state=failed share=30 class=latency vgpu-state=pinned", dict(state="pinned", share=30, slo_class="latency")),
    ("", None),
    ("a comment an admin wrote", None),
    ("share=30 class=latency", None),  # no state
    ("vgpu-state=placed share=30 class=latency", None),  # a placement's state, not a request's
    ("vgpu-state=Unplaced share=30 class=latency", None),
    ("vgpu-state= share=30 class=latency", None),
    ("vgpu-state=unplaced class=latency", None),  # no share
    ("vgpu-state=unplaced share=0 class=latency", None),
    ("vgpu-state=unplaced share=101 class=latency", None),
    ("vgpu-state=unplaced share=3x class=latency", None),
    ("vgpu-state=unplaced share=-3 class=latency", None),
    ("vgpu-state=unplaced share=30", None),  # no class
    ("vgpu-state=unplaced share=30 class=fast", None),
    ("vgpu-state=unplaced share=30 class=latency mem_mib=0", None),
    ("vgpu-state=unplaced share=30 class=latency mem_mib=8G", None),
    ("vgpu-state=unplaced share=30 class=latency begin=soon", None),
    ('wait="never closed vgpu-state=unplaced share=30 class=latency', None),  # the quote runs to the end
    ('VGPU-STATE=unplaced share=30 class=latency', None),
    ("vgpu-state=unplaced share=100 class=throughput gpus=1",
     dict(state="unplaced", share=100, slo_class="throughput", gpus=1)),
    ("vgpu-state=unplaced share=50 class=throughput gpus=1", None),  # whole GPUs are all of their units
    ("vgpu-state=unplaced share=100 class=throughput gpus=1 mem_mib=8192", None),  # and all of their memory
    ("vgpu-state=unplaced share=100 class=throughput gpus=0", None),
    ("vgpu-state=unplaced share=100 class=throughput gpus=9", None),  # above WHOLE_GPUS_MAX
    ("vgpu-state=unplaced share=100 class=throughput gpus=one", None),
    ("vgpu-state=unplaced share=60 class=latency profile=resnet50 slo=p99:50ms,rate:200/s",
     dict(state="unplaced", share=60, slo_class="latency", profile="resnet50", slo="p99:50ms,rate:200/s")),
    ("vgpu-state=unplaced share=60 class=latency profile=resnet50", None),  # a profile without its target
    ("vgpu-state=unplaced share=60 class=latency slo=p99:50ms", None),  # and a target without its profile
    ("vgpu-state=unplaced share=60 class=latency profile=resnet50 slo=p99:fast", None),
    ("vgpu-state=unplaced share=60 class=latency profile=-x slo=p99:50ms", None),
    ("vgpu-state=unplaced share=100 class=latency gpus=1 profile=resnet50 slo=p99:50ms", None),  # not whole GPUs
]

# --vgpu-profile NAME -> whether it is a workload name
PROFILES = [
    ("resnet50", True), ("a", True), ("bert-large_v1.2", True), ("9", True), ("x" * 64, True),
    ("x" * 65, False), ("", False), ("-x", False), (".x", False), ("_x", False), ("x y", False), ("x/y", False),
    ("x,y", False), ("x:y", False), ("x=y", False), ("caf\u00e9", False), ("x\n", False),
]

# --vgpu-slo TARGET -> (p99 in ms, rate per second or None), or None when it is not a target
SLOS = [
    ("p99:50ms", (50.0, None)), ("p99:0.5s", (500.0, None)), ("p99:50ms,rate:200/s", (50.0, 200.0)),
    ("rate:200/s,p99:1s", (1000.0, 200.0)), ("p99:1.125ms", (1.125, None)), ("p99:000000001ms", (1.0, None)),
    ("p99:0.001s", (1.0, None)), ("p99:50ms,rate:0.5/s", (50.0, 0.5)), ("p99:999999999ms", (999999999.0, None)),
    ("p99:fast", None), ("p99:0ms", None), ("p99:0.000s", None), ("p99:50", None), ("p99:50 ms", None),
    ("p99:50MS", None), ("P99:50ms", None), ("p99:1.2345ms", None), ("p99:5.ms", None), ("p99:.5ms", None),
    ("p99:1234567890ms", None), ("rate:200/s", None), ("p99:50ms,rate:0/s", None), ("p99:50ms,rate:200", None),
    ("p99:50ms,rate:200/m", None), ("p99:50ms,p99:40ms", None), ("p95:50ms", None), ("", None),
    ("p99:50ms,", None), (",p99:50ms", None), ("p99:5:0ms", None), (" p99:50ms", None), ("p99:-5ms", None),
    ("p99:+5ms", None), ("p99:50ms;rate:2/s", None), ("p99:50ms,rate:2/s,rate:3/s", None),
]

# a request (VgpuRequest's fields) -> the admin_comment written for it; read back, it is the same
# request, except that a double quote in free text comes back as a single one
ROUND_TRIPS = [
    (dict(state="unplaced", share=30, slo_class="latency"), "vgpu-state=unplaced share=30 class=latency"),
    (dict(state="unplaced", share=30, slo_class="throughput", memory_mib=8192, model="h100", begin=17,
          nodelist="n[1-2]"),
     "vgpu-state=unplaced share=30 class=throughput mem_mib=8192 model=h100 begin=17 nodelist=n[1-2]"),
    (dict(state="pinned", share=100, slo_class="best-effort", gpu="GPU-9f2", wait=None),
     "vgpu-state=pinned share=100 class=best-effort gpu=GPU-9f2"),
    (dict(state="unplaced", share=5, slo_class="latency", wait='every GPU is busy; "a100" too'),
     "vgpu-state=unplaced share=5 class=latency wait=\"every GPU is busy; 'a100' too\""),
    (dict(state="failed", share=50, slo_class="latency", wait="no GPU has 50% and share=10 room"),
     'vgpu-state=failed share=50 class=latency wait="no GPU has 50% and share=10 room"'),
    (dict(state="pinned", share=100, slo_class="throughput", model="a100", gpus=1, gpu="GPU-3"),
     "vgpu-state=pinned share=100 class=throughput model=a100 gpus=1 gpu=GPU-3"),
    (dict(state="unplaced", share=60, slo_class="latency", model="h100", profile="bert.v2", slo="p99:0.5s",
          begin=17),
     "vgpu-state=unplaced share=60 class=latency model=h100 profile=bert.v2 slo=p99:0.5s begin=17"),
]

# what a user submits: (tres_per_node as Slurm gives it for --gres, --vgpu-class, --vgpu-mem,
# --nodelist, --begin as epoch seconds[, --vgpu-profile, --vgpu-slo]), None for an option not given;
# the class, size, profile and target cases above are submitted too
SUBMITS = [
    ("gres:vgpu:30", None, None, None, None),
    ("gres:vgpu:h100:30", "latency", "8G", "n[1-2]", 4102444800),
    ("gres/vgpu:100", "best-effort", "1K", None, None),
    ("gres:vgpu", None, None, None, None),
    # whole GPUs (--gres=gpu:N, --gpus-per-node=N): recorded as all of one GPU, gpus=N
    ("gres:gpu:1", None, None, None, None),
    ("gres/gpu:h100:1", "latency", None, "n[1-2]", 4102444800),
    ("gres:gpu", None, None, None, None),
    ("gres:gpu:2", None, None, None, None),
    ("gres/gpu:0", None, None, None, None),
    # a latency target, met by a slice of at most N% (the profile and target cases below ask 60%)
    ("gres:vgpu:h100:60", "latency", None, None, None, "resnet50", "p99:50ms,rate:200/s"),
    ("gres:vgpu:60", None, None, None, None, "resnet50", None),
    ("gres:vgpu:60", None, None, None, None, None, "p99:50ms"),
    ("gres:gpu:1", None, None, None, None, "resnet50", "p99:50ms"),
]
