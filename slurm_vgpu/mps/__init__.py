"""MPS, one GPU at a time: the control binary's protocol (:mod:`.control`, NVIDIA's or the dev
kit's fake behind one interface), what the slices in Postgres owe each user's server
(:mod:`.slices`), and :class:`GpuMps`, through which the prolog, the epilog and the node agent
start, cap, restart and stop a GPU's daemon and servers (:mod:`.gpu`)."""
from .control import MpsControl, MpsError, MpsUnavailable
from .gpu import GpuMps
from .slices import Caps

__all__ = ["Caps", "GpuMps", "MpsControl", "MpsError", "MpsUnavailable"]
