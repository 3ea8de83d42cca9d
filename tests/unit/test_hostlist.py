from __future__ import annotations

import re

import pytest

from slurm_vgpu.hostlist import HostlistError, expand


@pytest.mark.parametrize(
    ("hostlist", "names"),
    [
        ("gpu01", ["gpu01"]),
        ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
        ("gpu[01-03,7]", ["gpu01", "gpu02", "gpu03", "gpu7"]),  # padding follows each lower bound
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
        ("gpu[01-02]-ib", ["gpu01-ib", "gpu02-ib"]),
        ("a,b[1-2],c", ["a", "b1", "b2", "c"]),
        ("a, b", ["a", "b"]),
        ("a,a,b", ["a", "b"]),
    ],
)
def test_expands_like_scontrol_show_hostnames(hostlist, names):
    assert expand(hostlist) == names


@pytest.mark.parametrize(
    ("hostlist", "says"),
    [
        ("gpu[3-1]", "backwards"),
        ("gpu[01-03", "without ']'"),
        ("gpu01-03]", "without '['"),
        ("gpu[a-b]", "N or N-M"),
        ("gpu[[1]]", "nest"),
        ("a,,b", "empty"),
        ("", "empty"),
    ],
)
def test_bad_hostlists_say_what_is_wrong(hostlist, says):
    with pytest.raises(HostlistError, match=re.escape(says)):
        expand(hostlist)
