"""Markdown tables and goal checks for ``benchmarks/run.py`` (pure formatting of the children's results)."""

from __future__ import annotations

from typing import Any

from _contestants import TRAIN_ROWS

NEAR_TIE = 0.05  # pixels whose top-2 probabilities differ by less than this are near ties
ALLOC_ROW = (
    "monai",
    "BasicUNet-same+alloc",
    "MONAI `BasicUNet` (same widths) with unetseg's allocator setting",
)
SYSTEM_ROW = (
    "unetseg",
    "unet-system",
    "unetseg `unet` (base 32) with glibc's malloc defaults (`UNETSEG_MALLOC=system`)",
)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def mib(r: dict[str, Any]) -> str:
    return f"{r['peak_rss_mib']:.0f} (+{r['peak_rss_mib'] - r['rss_before_mib']:.0f})"


def _gflops(flops: float | None) -> str:
    return "n/a" if flops is None else f"{flops / 1e9:.1f}"


def train_table(res: dict[str, Any], cfg: dict[str, Any], ceiling: dict[str, Any]) -> str:
    b, s = cfg["batch"], cfg["size"]
    peak = ceiling.get("float32", {}).get("gflops")
    lines = [
        f"### 1. Training throughput (batch {b}, {s}x{s}, 1 channel, 2 classes; warm-up {cfg['warmup']}, "
        f"median of {cfg['repeats']} steps)",
        "",
        "| network | params | GFLOPs / patch (fwd) | s / step | patches/s | achieved GFLOP/s (% of ceiling) "
        "| peak RSS MiB (+run) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, name, label in [*TRAIN_ROWS, ALLOC_ROW, SYSTEM_ROW]:
        r = res.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | | | |")
            continue
        achieved = "n/a"
        if r["step_flops"]:
            g = r["step_flops"] / r["step_s"] / 1e9
            achieved = f"{g:.0f}" + (f" ({100 * g / peak:.0f}%)" if peak else "")
        extra = (
            f" [{r['precision']}, channels_last {r['channels_last']}]"
            if name in ("unet", "unet-basic", "attention_unet", "unet_pp", "unet-system")
            else ""
        )
        lines.append(
            f"| {label}{extra} | {r['params'] / 1e6:.2f} M | {_gflops(r['fwd_flops_per_patch'])} "
            f"| {r['step_s']:.2f} | {r['patches_per_s']:.2f} | {achieved} | {mib(r)} |"
        )
    lines.append("")
    if "error" not in ceiling:
        bf = ceiling["bfloat16"]
        lines.append(
            f"4. Ceiling: fp32 matmul {ceiling['float32']['n']}x{ceiling['float32']['n']} "
            f"{peak:.0f} GFLOP/s; bf16 matmul ({bf['n']}x{bf['n']}) {bf['gflops']:.1f} GFLOP/s. "
            "Achieved = FLOPs of forward + backward (counted by `torch.utils.flop_counter`) / step time."
        )
        lines.append("")
    lines += _train_goals(res, peak)
    return "\n".join(lines) + "\n"


def _train_goals(res: dict[str, Any], peak: float | None = None) -> list[str]:
    out = []
    for ours, peer, widths in (
        ("unet", "BasicUNet-same", "32, 64, 128, 256, 512 (unetseg's default)"),
        ("unet-basic", "BasicUNet", "32, 32, 64, 128, 256 (MONAI's default)"),
    ):
        u, m = res.get(ours, {}), res.get(peer, {})
        if "patches_per_s" not in u or "patches_per_s" not in m:
            out.append(f"- Goals at widths {widths}: not evaluated (a run failed).")
            continue
        ratio = u["patches_per_s"] / m["patches_per_s"]
        out.append(
            f"- Goal: training throughput >= 3x MONAI `BasicUNet` at the same widths, {widths}: {ratio:.2f}x "
            f"({u['patches_per_s']:.2f} vs {m['patches_per_s']:.2f} patches/s): {verdict(ratio >= 3)}."
        )
        if peak and m.get("step_flops") and u.get("step_flops"):
            # 3x the peer's patches/s at unetseg's FLOPs per patch, in GFLOP/s
            need = 3 * m["patches_per_s"] / u["patches_per_s"] * u["step_flops"] / u["step_s"] / 1e9
            out.append(
                f"  3x would take {need:.0f} GFLOP/s of fp32 arithmetic, {100 * need / peak:.0f}% of this "
                f"CPU's measured matmul ceiling ({peak:.0f} GFLOP/s); the peer reaches "
                f"{m['step_flops'] / m['step_s'] / 1e9:.0f}."
            )
        out.append(_memory_goal(u, m))
    u, m, a = res.get("unet", {}), res.get("BasicUNet-same", {}), res.get(ALLOC_ROW[1], {})
    if all("patches_per_s" in r for r in (u, m, a)):
        out.append(
            f"- Given unetseg's allocator setting too, the peer (widths 32..512) runs at "
            f"{a['patches_per_s']:.2f} patches/s ({a['patches_per_s'] / m['patches_per_s']:.2f}x its "
            "default), and unetseg is "
            f"{u['patches_per_s'] / a['patches_per_s']:.2f}x against that."
        )
    s = res.get(SYSTEM_ROW[1], {})
    if all("patches_per_s" in r for r in (u, m, s)):
        out.append(_without_allocator(s, u, m))
    return out


def _without_allocator(s: dict[str, Any], u: dict[str, Any], m: dict[str, Any]) -> str:
    """What ``UNETSEG_MALLOC=system`` (``s``) trades, against unetseg's default (``u``) and the peer."""
    ds, du, dm = (r["peak_rss_mib"] - r["rss_before_mib"] for r in (s, u, m))
    return (
        f"- With glibc's malloc defaults (`UNETSEG_MALLOC=system`) unetseg is {_speed(s) / _speed(m):.2f}x "
        f"the peer and the run adds {ds:.0f} MiB (vs the peer's {dm:.0f}: memory goal {verdict(ds <= dm)}); "
        f"the allocator setting buys {_speed(u) / _speed(s):.2f}x for {du - ds:+.0f} MiB."
    )


def _speed(r: dict[str, Any]) -> float:
    """Higher is faster: patches/s of a training row, 1 / seconds of a prediction row."""
    return r["patches_per_s"] if "patches_per_s" in r else 1 / r["median_s"]


def _memory_goal(u: dict[str, Any], m: dict[str, Any]) -> str:
    """The memory goal on what the measured work added to each process (the peer's process also holds its
    library, which is not the work's memory); the whole peaks are reported beside it."""
    du, dm = (r["peak_rss_mib"] - r["rss_before_mib"] for r in (u, m))
    return (
        f"- Goal: peak memory no higher than the peer's: the run added {du:.0f} vs {dm:.0f} MiB (whole "
        f"process peaks {u['peak_rss_mib']:.0f} vs {m['peak_rss_mib']:.0f} MiB): {verdict(du <= dm)}."
    )


def sliding_table(res: dict[str, Any], cfg: dict[str, Any]) -> str:
    n, t = cfg["size"], cfg["tile"]
    w = res.get("weights", {})
    trained = (
        f"first trained briefly ({cfg['weights']['steps']} steps on synthetic cells, loss "
        f"{w['first_loss']:.2f} -> {w['last_loss']:.2f}) so that its outputs are confident, as a real "
        "model's are"
        if "error" not in w
        else f"untrained (the brief training failed: {w['error']})"
    )
    lines = [
        f"### 2. Sliding-window prediction of a {n}x{n} image (tile {t}, overlap {cfg['overlap']}, Gaussian "
        f"blending, {cfg['batch']} tiles per batch; warm-up on {cfg['warmup_size']}x{cfg['warmup_size']}, "
        f"median of {cfg['repeats']})",
        "",
        "Both blend the softmax probabilities of the same unetseg `unet` (base 32) over a synthetic cell "
        f"image (z-scored); the network was {trained}.",
        "",
        "| implementation | settings | tiles | s | peak RSS MiB (+run) |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {
        "unetseg": "unetseg `Predictor` (as `unetseg predict`)",
        "monai": f"MONAI `sliding_window_inference` (sw_batch_size {cfg['batch']}, mode gaussian)",
        "unetseg-system": "unetseg `Predictor`, glibc's malloc defaults (`UNETSEG_MALLOC=system`)",
    }
    for impl, label in names.items():
        r = res.get(impl, {"error": "not run"})
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | |")
        else:
            lines.append(
                f"| {label} | {r['settings']} | {r['tiles'] or ''} | {r['median_s']:.2f} | {mib(r)} |"
            )
    lines.append("")
    u, m, agree, check = res.get("unetseg", {}), res.get("monai", {}), res.get("agreement"), res.get("check")
    if agree is None or check is None:
        return "\n".join([*lines, "Goals: not evaluated (a run failed)."]) + "\n"
    ratio = m["median_s"] / u["median_s"]
    c = check["size"]
    lines += [
        f"- Goal: >= 3x `sliding_window_inference`: {ratio:.2f}x: {verdict(ratio >= 3)}.",
        f"- Goal: the same argmax on all but near-tie pixels (top-2 margin < {NEAR_TIE}), checked on the "
        f"top-left {c}x{c} square, where both tile grids coincide and MONAI is given unetseg's Gaussian map: "
        f"{_agreement(check)}: {verdict(check['max_margin_where_differ'] < NEAR_TIE)}.",
        f"- At both defaults on the whole {n}x{n} image: {_agreement(agree)}. Two design choices differ: "
        "unetseg spreads the tiles evenly on multiples of 2**depth where MONAI steps by tile*(1-overlap) "
        "and clips the last tile, and MONAI floors its Gaussian map at 1e-3, which near the image border "
        "turns the blend into a plain average with predictions from tile edges (unetseg floors each 1-D "
        "factor at 1e-6). A zero-padded network predicts differently near a tile's edge, so pixels where "
        "the tiles disagree differ.",
        _memory_goal(u, m),
    ]
    s = res.get("unetseg-system", {})
    if "median_s" in s:
        lines.append(_without_allocator(s, u, m))
    return "\n".join(lines) + "\n"


def _agreement(a: dict[str, Any]) -> str:
    return (
        f"max abs probability difference {a['max_abs_diff']:.1e}, argmax different on {a['differ']} of "
        f"{a['pixels']} pixels (largest top-2 margin among them {a['max_margin_where_differ']:.3f})"
    )


# label; (inference variant, the variant it adds to); (training variant, ...); key into _defaults().
# Variants are those of the "tuned" child (allocator setting on); "system" is the glibc-defaults baseline.
Pair = tuple[str, str | None] | None
FAST_ROWS: list[tuple[str, Pair, Pair, str]] = [
    ("fp32 eager, glibc malloc defaults (the baseline)", ("system", None), ("system", None), ""),
    ("+ allocator setting (no mmap for large buffers)", ("fp32", "system"), ("fp32", "system"), "alloc"),
    ("+ channels_last", ("cl", "fp32"), ("cl", "fp32"), "cl"),
    ("+ channels_last + BatchNorm folded into the convs", ("fuse+cl", "cl"), None, "fold"),
    (
        "torch.compile (inference: of the folded channels_last net)",
        ("compile+fuse+cl", "fuse+cl"),
        ("compile", "fp32"),
        "compile",
    ),
    ("ONNX Runtime (fp32, BatchNorm folded)", ("ort", "fuse+cl"), None, "ort"),
    ("bf16 autocast", ("bf16", "fp32"), ("bf16", "fp32"), "bf16"),
    ("bf16 autocast + channels_last", ("bf16+cl", "fp32"), ("bf16+cl", "fp32"), "bf16+cl"),
]


def _lookup(res: dict[str, Any], mode: str, variant: str) -> tuple[dict[str, Any] | None, str]:
    """The record of ``variant`` and the child it came from (bf16 on a slow-bf16 CPU: the tiny run)."""
    if variant == "system":
        child, variant = f"{mode}_system", "fp32"
    elif variant.startswith("bf16") and not res.get("fast_bf16"):
        child = f"{mode}_bf16_small"
    else:
        child = f"{mode}_tuned"
    return res.get(child, {}).get("variants", {}).get(variant), child


def _cell(res: dict[str, Any], mode: str, pair: Pair) -> tuple[str, float]:
    """``"123 ms (1.25x; 1.10x over cl)"``: speed-up against the baseline and over the variant it adds
    to; the second number (0 when not measured) is what the default should follow."""
    if pair is None:
        return "", 0.0
    variant, ref = pair
    r, child = _lookup(res, mode, variant)
    if r is None:
        return "not run", 0.0
    tiny = child.endswith("_small")
    base, _ = _lookup(res, mode, "system") if not tiny else (res[child]["variants"]["fp32"], child)
    text = f"{1000 * r['median_s']:.0f} ms"
    if base:
        text += f" ({base['median_s'] / r['median_s']:.2f}x"
    ref_rec = _lookup(res, mode, ref)[0] if ref and not tiny else (base if tiny else None)
    marginal = ref_rec["median_s"] / r["median_s"] if ref_rec else 0.0
    if ref_rec and ref not in ("system",) and not tiny:
        text += f"; {marginal:.2f}x over {ref}"
    text += ")" if base else ""
    if "compile" in variant:
        text += f", cold compile {r['first_s']:.0f} s"
    return text + (" [tiny size]" if tiny else ""), marginal


def _defaults() -> dict[str, tuple[tuple[bool | None, bool | None], str]]:
    """What unetseg picks on this machine's CPU, per FAST_ROWS key: ((inference, training), note)."""
    import torch

    from unetseg.config import TrainConfig
    from unetseg.runtime import autocast_dtype, use_channels_last

    cpu = torch.device("cpu")
    cl = (use_channels_last("auto", cpu, 2, inference=True), use_channels_last("auto", cpu, 2))
    bf16 = autocast_dtype("auto", cpu) is not None
    return {
        "alloc": ((True, True), "set by the `unetseg` command at start-up"),
        "cl": (cl, "`channels_last: auto`"),
        "fold": ((cl[0], None), "folding: checkpoints loaded for prediction"),
        "compile": ((False, TrainConfig().compile), "opt-in: `--compile` / `train.compile`"),
        "ort": ((None, None), "opt-in: `unetseg export --format onnx`, then predict with the file"),
        "bf16": ((bf16, bf16), "`--precision auto`"),
        "bf16+cl": ((bf16 and cl[0], bf16 and cl[1]), ""),
    }


def _default_text(flags: tuple[bool | None, bool | None], speeds: tuple[float, float], note: str) -> str:
    """``inference: on; training: off; note``, flagging a default that its own numbers contradict."""
    parts = []
    for mode, flag, speed in zip(("inference", "training"), flags, speeds, strict=True):
        if flag is None or not speed:
            continue
        warn = " (check: slower here)" if flag and speed < 0.97 else ""
        warn = " (check: faster here)" if not flag and speed > 1.1 else warn
        parts.append(f"{mode}: {'on' if flag else 'off'}{warn}")
    return "; ".join([*parts, note] if note else parts)


def fastpath_table(res: dict[str, Any], cfg: dict[str, Any], bf16_cfg: dict[str, Any]) -> str:
    b, s = cfg["batch"], cfg["size"]
    lines = [
        "### Fast paths: what unetseg turns on by default, from these numbers",
        "",
        f"unetseg `unet` (base 32, depth 4): inference of {b} tiles of {s}x{s} under `torch.inference_mode`, "
        f"and one training step on {b} patches of {s}x{s}; in turns, median of {cfg['repeats']}. Every row "
        "after the first runs with the allocator setting. Speed-ups: against the first row; then over the "
        "variant the row adds to, which is what the default follows.",
        "",
        "| path | inference | training step | max abs logit diff vs fp32 | unetseg default here |",
        "| --- | --- | --- | --- | --- |",
    ]
    defaults = _defaults()
    for label, inf, tr, key in FAST_ROWS:
        (ti, si), (tt, st) = _cell(res, "infer", inf), _cell(res, "train", tr)
        if ti in ("not run", "") and tt in ("not run", ""):
            continue
        r = _lookup(res, "infer", inf[0])[0] if inf else None
        diff = f"{r['max_abs_diff']:.1e}" if r and "max_abs_diff" in r else ""
        flags, note = defaults.get(key, ((None, None), ""))
        lines.append(f"| {label} | {ti} | {tt} | {diff} | {_default_text(flags, (si, st), note)} |")
    children = {k: v for k, v in res.items() if isinstance(v, dict)}
    errors = [f"{k}: {v['error']}" for k, v in children.items() if "error" in v]
    errors += [f"{k}, {var}: {e}" for k, v in children.items() for var, e in v.get("errors", {}).items()]
    lines += ["", *(f"- failed: {e}" for e in errors)]
    if not res.get("fast_bf16"):
        lines.append(
            f"- bf16 rows: this CPU has no AVX-512-bf16/AMX, so bf16 was timed only at "
            f"{bf16_cfg['size']}x{bf16_cfg['size']}, batch {bf16_cfg['batch']}, against fp32 at the "
            "same size (at full size it would take minutes)."
        )
    lines.append(
        "- CUDA (not measured by this CPU run): bf16 autocast (fp16 where bf16 is unsupported), "
        "channels_last, `cudnn.benchmark`, pinned memory and DataLoader workers are the defaults."
    )
    return "\n".join(lines) + "\n"
