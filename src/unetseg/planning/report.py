"""The plan as a person reads it: a fingerprint summary and a table of every choice with its reason."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from unetseg.planning.fingerprint import Fingerprint
from unetseg.planning.plan import Plan


def fingerprint_lines(fp: Fingerprint) -> list[str]:
    inten = fp.intensity[0]
    objects = "; ".join(
        f"class {k}: {o['count']} objects, median {o['median_voxels']:.0f} voxels"
        + (f", 90% within {'x'.join(f'{e:.0f}' for e in o['p90_extent'])} px "
           f"({'x'.join(f'{100 * e:.0f}%' for e in o['p90_extent_share'])} of the image), "
           f"{100 * o['border_fraction']:.0f}% at the border" if o.get("p90_extent") else "")
        for k, o in fp.objects.items()
        if o.get("count")
    )
    thin = ", ".join(f"{k}: {t['p10']:.3g}" for k, t in fp.thickness.items() if t.get("p10") is not None)
    return [
        f"{fp.n_cases} cases, {fp.spatial_dims}D, {fp.channels} channel(s), median size {fp.median_shape}, "
        f"median spacing {[round(s, 3) for s in fp.median_spacing]}, pixel types {sorted(set(fp.dtypes))}",
        f"intensity (channel 0): {inten['min']:g} .. {inten['max']:g}, mean {inten['mean']:.3g}, "
        f"std {inten['std']:.3g}; foreground {100 * fp.foreground_fraction:.1f}% of voxels",
        f"mask values {fp.class_values}; {objects or 'no objects'}",
        f"thinnest 10% of each class (thickness, spacing units): {thin or '-'}",
    ]


def show_plan(plan: Plan, console: Console) -> None:
    """Print the fingerprint, the table of decisions and the estimate of the run's length."""
    console.rule("[bold]plan")
    for line in fingerprint_lines(plan.fingerprint):
        console.print(line, highlight=False)
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("option", no_wrap=True)
    table.add_column("value", overflow="fold", max_width=32)
    table.add_column("why", overflow="fold")
    for key, value, why in plan.rows():
        table.add_row(key, value, why)
    console.print(table)
    for note in plan.timing.notes:
        console.print(f"note: {note}", highlight=False)
    for note in probe_notes(plan):
        console.print(note, highlight=False)
    console.print(f"this run: {plan.estimate}", highlight=False)


def probe_notes(plan: Plan) -> list[str]:
    """What ``train`` will try against the plan's choice, one line per alternative."""
    notes = [f"probe: train will also try {describe(alt)} against {describe(plan)} for a short time each "
             "and keep the one with the better validation Dice" for alt in plan.alternatives]
    if plan.fine is not None:
        notes.append(f"cascade: when the coarse grid is kept (and, with train.cascade auto, the probe leaves "
                     f"the minutes), train follows it with {describe(plan.fine)} that also sees its "
                     "prediction, and keeps that when it validates better")
    return notes


def describe(plan: Plan) -> str:
    """``coarse (2.1x2.1 coarser, patch [256, 256], base 16)``: a candidate in a few words."""
    v = plan.planned() | {k: d.value for d in plan.decisions for k in [d.key]}
    factor = v.get("data.downsample")
    grid = "x".join(f"{f:g}" for f in factor) + " coarser" if factor else "full resolution"
    return f"{plan.name} ({grid}, patch {v.get('data.patch_size')}, base {v.get('model.base_channels')})"
