"""A service file: one inference service run as several vgpu jobs behind one router.

Slurm-style ``Key=Value`` lines, as slurm-vgpu.conf, ``#`` comments::

    Name=chat
    Command=python3 serve.py --port %p
    Port=9100
    Replicas=3
    Share=30
    Class=latency
    Listen=127.0.0.1:8080

Instead of ``Replicas``, ``Rate=200/s`` with ``Profile`` sizes the service from the profile: as
many replicas as carry that rate at 80% of their profiled throughput (``serve start`` reads it).
Replica i (from 0) runs ``Command`` with ``%p`` replaced by ``Port + i``, so that two replicas on
one node never ask for the same port; a Command line is taken whole (a shell command may hold #).
``Model``, ``Memory`` and ``Partition`` are those of ``sbatch --gres=vgpu:MODEL:SHARE --vgpu-mem
--partition``; ``Model=h100,a100`` spreads the replicas over the models in turn (replica i on the
(i mod n)-th); ``Profile`` names the replica's profiled workload (``slurm-vgpu profile``), whose
throughput on each GPU model at ``Share`` weights the router. Every problem of a file is reported at once, each with its line and what to write
instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import contract
from ..config import unknown_key
from .haproxy import NAME

KEYS = ("Name", "Command", "Port", "Replicas", "Share", "Class", "Model", "Memory", "Partition", "Listen",
        "Profile", "Rate")
SPELT = {k.lower(): k for k in KEYS}  # keys compare without case, as Slurm's
REQUIRED = ("Name", "Command", "Port", "Share", "Listen")
PORT_MARK = "%p"
MOST_REPLICAS = 64


class ServiceError(ValueError):
    """Every problem of a service file, one per line."""


@dataclass(frozen=True)
class Service:
    name: str
    command: str  # with %p where the replica's port goes
    port: int  # replica i listens on port + i
    share: int  # % of one GPU per replica
    listen: tuple[str, int]  # the router's address and port
    replicas: int | None  # None: sized from rate and the profile when started
    slo_class: str = contract.DEFAULT_CLASS
    models: tuple[str, ...] = ()  # GPU models the replicas ask for in turn; none: any
    memory_mib: int | None = None
    partition: str | None = None
    profile: str | None = None  # a profiled workload's name: its curves weight the replicas
    rate: float | None = None  # requests/s the replicas must carry (with profile, instead of replicas)

    def replica_command(self, index: int) -> str:
        return self.command.replace(PORT_MARK, str(self.port_of(index)))

    def model_of(self, index: int) -> str | None:
        """The GPU model replica ``index`` asks for (None: any)."""
        return self.models[index % len(self.models)] if self.models else None

    def port_of(self, index: int) -> int:
        return self.port + index


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() and 1 <= int(text) <= 65535 else None


def _check(key: str, value: str) -> tuple[object, str | None]:
    """A key's value as the Service holds it, or the problem with what to write instead."""
    if key == "Name":
        ok = NAME.match(value) and value[0].isalpha()
        return value, None if ok else "a name starts with a letter; letters, digits and _.:- only, e.g. Name=chat"
    if key == "Command":
        return value, None if PORT_MARK in value else (
            f"the command must take its port from {PORT_MARK}, e.g. Command=python3 serve.py --port {PORT_MARK}")
    if key == "Port":
        port = _port(value)
        return port, None if port and port >= 1024 else "a port from 1024 to 65535, the first replica's, e.g. Port=9100"
    if key == "Replicas":
        n = int(value) if value.isdigit() else 0
        return n, None if 1 <= n <= MOST_REPLICAS else f"a whole number of replicas from 1 to {MOST_REPLICAS}, e.g. Replicas=3"
    if key == "Share":
        n = int(value) if value.isdigit() else 0
        return n, None if 1 <= n <= 100 else "each replica's % of one GPU, 1 to 100, e.g. Share=30"
    if key == "Class":
        return value, None if contract.class_error(value) is None else f"one of {contract.CLASS_NAMES}, e.g. Class=latency"
    if key == "Memory":
        try:
            return contract.memory_mib(value), None
        except ValueError:
            return None, "each replica's GPU memory cap with an optional unit K, M, G or T, e.g. Memory=8G"
    if key == "Listen":
        host, sep, port = value.rpartition(":")
        ok = sep and host and _port(port)
        return (host, _port(port)), None if ok else "the router's address and port, e.g. Listen=0.0.0.0:8080"
    if key == "Rate":
        rate = contract.per_second(value)
        return rate, None if rate else "the requests per second the service must carry, e.g. Rate=200/s"
    if key == "Profile":
        problem = contract.profile_error(value)
        return value, None if problem is None else problem.replace("--vgpu-profile=", "Profile=")
    if key == "Model":
        models = tuple(m.strip() for m in value.split(","))
        ok = all(m and m.replace("_", "").isalnum() for m in models)
        return models, None if ok else "a GPU model, or several in turn, e.g. Model=h100 or Model=h100,a100"
    examples = {"Partition": "gpu"}
    return value, None if value else f"a {key.lower()} name, e.g. {key}={examples[key]}"


def parse(text: str, source: str = "service file") -> Service:
    """The service of a file's ``text``; ServiceError listing every problem."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        key, sep, value = (part.strip() for part in raw.partition("="))
        spelt = SPELT.get(key.lower())
        if spelt != "Command":  # a shell command may hold a #: its line is taken whole
            key, sep, value = (part.strip() for part in raw.split("#", 1)[0].partition("="))
        if not key and not value:
            continue
        if not sep:
            problems.append(f"{source}:{number}: expected Key=Value, got {raw.strip()!r}")
        elif spelt is None:
            problems.append(f"{source}:{number}: {unknown_key(key, KEYS)}")
        elif spelt in values:
            problems.append(f"{source}:{number}: {spelt} is given twice; keep one")
        else:
            converted, problem = _check(spelt, value)
            values[spelt] = converted
            if problem:
                problems.append(f"{source}:{number}: {spelt}={value}: {problem}")
    problems += [f"{source}: {key} is missing; add {key}=..." for key in REQUIRED if key not in values]
    if "Replicas" in values and "Rate" in values:
        problems.append(f"{source}: Replicas and Rate are both given; keep one (Rate sizes the replicas from Profile)")
    elif "Replicas" not in values and "Rate" not in values:
        problems.append(f"{source}: Replicas is missing; add Replicas=N, or Rate=N/s with Profile=NAME to size them")
    elif "Rate" in values and "Profile" not in values:
        problems.append(f"{source}: Rate sizes the replicas from the workload's profile; add Profile=NAME, "
                        "or give Replicas=N instead")
    if "Port" in values and (values.get("Replicas") or 1) - 1 + (values["Port"] or 0) > 65535:
        problems.append(f"{source}: replica ports Port to Port+Replicas-1 end above 65535; give a lower Port")
    if problems:
        raise ServiceError("\n".join(problems))
    return Service(
        name=values["Name"], command=values["Command"], port=values["Port"], share=values["Share"],
        listen=values["Listen"], replicas=values.get("Replicas"), slo_class=values.get("Class", contract.DEFAULT_CLASS),
        models=values.get("Model", ()), memory_mib=values.get("Memory"), partition=values.get("Partition"),
        profile=values.get("Profile"), rate=values.get("Rate"))
