"""``slurm-vgpu render``: the Slurm-side files from the GPU inventory, through the package's Slurm templates."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import click
import sqlalchemy as sa

from .. import render
from ..adapters.gpus import GpuRecord, InventoryError, NvmlInventory, SimulatedInventory
from ..adapters.slurm import Node, SlurmError
from ..db.models import Gpu
from .runtime import Runtime, pass_runtime


def nodes_from_db(runtime: Runtime) -> list[render.NodeSpec]:
    with runtime.session() as session:
        gpus = session.scalars(sa.select(Gpu).order_by(Gpu.node, Gpu.index)).all()
    by_node: dict[str, list[GpuRecord]] = {}
    for g in gpus:
        by_node.setdefault(g.node, []).append(GpuRecord(
            index=g.index, minor=g.minor, uuid=g.uuid, name=g.name, model=g.model, sm_count=g.sm_count,
            memory_mib=g.memory_mib, compute_capability=g.compute_capability,
        ))
    return [_node(name, records) for name, records in by_node.items()]


def nodes_from_files(paths: tuple[Path, ...]) -> list[render.NodeSpec]:
    """One simulated inventory file per node; its ``node`` field names it (else the file's stem)."""
    nodes = []
    for path in paths:
        gpus = SimulatedInventory(path).gpus()
        nodes.append(_node(json.loads(path.read_text()).get("node") or path.stem, gpus))
    return nodes


def with_slurm_features(nodes: list[render.NodeSpec], known: Mapping[str, Node]) -> list[render.NodeSpec]:
    """Each node with the Features= Slurm reports for it (sinfo's available features), so that its
    rendered NodeName line can stand for the site's own; a node Slurm does not know keeps none."""
    return [replace(n, features=tuple(sorted(known[n.name].features))) if n.name in known else n for n in nodes]


def _node(name: str, gpus: list[GpuRecord]) -> render.NodeSpec:
    """CPUs and RealMemory unknown: the rendered NodeName lines carry only what slurm-vgpu adds."""
    return render.NodeSpec(name=name, gpus=tuple(gpus), cpus=None, memory_mib=None)


@click.command("render")
@click.argument("names", nargs=-1, type=click.Choice(list(render.SITE_FILES)), metavar="[FILE]...")
@click.option("--from-db", is_flag=True, help="Every node's GPUs as the agents registered them in Postgres.")
@click.option("--from-nvml", is_flag=True, help="This node's GPUs, read through NVML.")
@click.option("--inventory", "inventory_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A simulated inventory file (JSON, one node); repeat for several nodes.")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Write the files here (created if missing) instead of printing them.")
@click.option("--plugstack-conf", default=render.DEFAULT_PLUGSTACK_CONF, show_default=True,
              help="PlugStackConfig= in the slurm.conf additions.")
@click.option("--spank-plugin", default=render.DEFAULT_SPANK_PLUGIN, show_default=True,
              help="Path of slurm_vgpu.so in the plugstack entry.")
@click.option("--spank-args", default="", help="Arguments after the plugin path in the plugstack entry.")
@click.option("--prolog", default=render.DEFAULT_PROLOG, show_default=True, help="Prolog= in slurm.conf.")
@click.option("--epilog", default=render.DEFAULT_EPILOG, show_default=True, help="Epilog= in slurm.conf.")
@click.option("--device-dir", default=render.DEFAULT_DEVICE_DIR, show_default=True,
              help="Where the GPUs' device files are (gres.conf File=<dir>/nvidia<minor>).")
@click.option("--features-from-slurm", is_flag=True,
              help="Give each NodeName line the node's Features= as Slurm reports them (sinfo), so the "
              "line can replace the site's own without losing what --constraint selects.")
@pass_runtime
def render_command(runtime: Runtime, names: tuple[str, ...], from_db: bool, from_nvml: bool,
                   inventory_files: tuple[Path, ...], output_dir: Path | None, plugstack_conf: str,
                   spank_plugin: str, spank_args: str, prolog: str, epilog: str, device_dir: str,
                   features_from_slurm: bool) -> None:
    """Render gres.conf, the slurm.conf additions (GresTypes, job_submit, plugstack, prolog and
    epilog, Gres= per node), the plugstack.conf.d entry and job_submit.lua. FILE picks some of them
    (default: all); several on stdout come each after a '==> FILE <==' line, as head(1) prints them."""
    if sum((from_db, from_nvml, bool(inventory_files))) != 1:
        raise click.UsageError("say where the inventory comes from: one of --from-db, --from-nvml, --inventory FILE")
    try:
        if from_db:
            nodes = nodes_from_db(runtime)
        elif from_nvml:
            nodes = [_node(runtime.config.node, NvmlInventory().gpus())]
        else:
            nodes = nodes_from_files(inventory_files)
    except InventoryError as exc:
        raise click.ClickException(str(exc)) from exc
    if not any(n.gpus for n in nodes):
        raise click.ClickException("the inventory has no GPUs; nothing to render (is the node agent running?)")
    if features_from_slurm:
        try:
            nodes = with_slurm_features(nodes, runtime.slurm().nodes())
        except SlurmError as exc:
            raise click.ClickException(f"could not read the nodes' features from Slurm: {exc}; render "
                                       "without --features-from-slurm and add Features= by hand") from exc
    settings = render.SiteSettings(
        plugstack_conf=plugstack_conf, spank_plugin=spank_plugin, spank_args=spank_args, prolog=prolog,
        epilog=epilog, operator_uids=runtime.config.operator_uids, default_class=runtime.config.default_class,
        device_dir=device_dir,
    )
    files = render.site_files(nodes, settings)
    chosen = {name: files[name] for name in (names or files)}
    if output_dir is not None:
        for name, text in chosen.items():
            path = output_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            click.echo(f"wrote {path}", err=True)
    elif len(chosen) == 1:
        click.echo(next(iter(chosen.values())), nl=False)
    else:
        click.echo("\n".join(f"==> {name} <==\n{text}" for name, text in chosen.items()), nl=False)
