"""Whole slides, volumes and cohorts (issue 14): peak memory and throughput of ``unetseg predict`` against the
image size, in memory vs streamed, ``--skip-background`` on a mostly-glass slide, and Dask with 1 and 2
workers. Every measurement is one fresh ``unetseg predict`` process (its peak RSS is its own).

Synthetic inputs (written once into ``--work``, outside the repository): tiled, deflate-compressed OME-TIFF
mosaics of the project's synthetic cell images (``slide_N.ome.tif``, N x N), a plain TIFF of the same
content for the in-memory path, a slide that is ~90% glass, a folder of 2048x2048 images (the cohort) and
a 3D volume. The model is a small random-weight U-Net (base 8, depth 3): throughput is the pipeline's,
not a trained model's. Run it alone on a quiet machine::

    .venv-bench/bin/python benchmarks/slides.py   # needs the dask extra (make bench installs it)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_facts, replace_section

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

REPO = Path(__file__).resolve().parents[1]
BLOCK = 2048


def _mosaic_block(seed: int) -> np.ndarray:
    from unetseg.data.synthetic import make_image

    return make_image("cells", (BLOCK, BLOCK), seed=seed)[0]


def write_slide(path: Path, size: tuple[int, ...], glass: float = 0.0) -> Path:
    """A tiled OME-TIFF mosaic of synthetic cell blocks; ``glass``: the share of blocks left bright, empty."""
    import tifffile

    if path.exists():
        return path
    blocks = [_mosaic_block(s) for s in range(4)]
    rng = np.random.default_rng(0)
    rows, cols = -(-size[0] // BLOCK), -(-size[1] // BLOCK)
    empty = rng.random((rows, cols)) < glass
    tile = 512

    def tiles():
        for y in range(0, size[0], tile):
            for x in range(0, size[1], tile):
                by, bx = y // BLOCK, x // BLOCK
                if empty[by, bx]:
                    yield np.full((tile, tile), 235, np.uint8)
                    continue
                b = blocks[(by * 7 + bx * 3) % 4]
                yield b[y % BLOCK : y % BLOCK + tile, x % BLOCK : x % BLOCK + tile]

    tmp = path.with_name(path.name + ".tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
        tw.write(tiles(), shape=size, dtype=np.uint8, tile=(tile, tile), compression="zlib",
                 compressionargs={"level": 1}, metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                         "PhysicalSizeY": 0.5})
    tmp.replace(path)
    return path


def write_plain(path: Path, size: int) -> Path:
    import tifffile

    if not path.exists():
        reps = -(-size // BLOCK)
        tifffile.imwrite(path, np.tile(_mosaic_block(0), (reps, reps))[:size, :size])
    return path


def write_cohort(folder: Path, n: int) -> Path:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if not (folder / f"img_{i}.tif").exists():
            tifffile.imwrite(folder / f"img_{i}.tif", _mosaic_block(10 + i))
    return folder


def write_volume(path: Path, side: int) -> Path:
    """A side^3 uint16 NIfTI of synthetic cells, uncompressed (read region by region); sides over 256
    tile the 256^3 volume (mirrored, so no seams) instead of synthesising a billion voxels."""
    import nibabel as nib

    if not path.exists():
        from unetseg.data.synthetic import make_image

        base = make_image("cells3d", (min(side, 256),) * 3, seed=0)[0]
        vol = base
        if side > base.shape[0]:
            reps = -(-side // base.shape[0])
            vol = np.pad(base, [(0, base.shape[0] * (reps - 1))] * 3, mode="symmetric")[:side, :side, :side]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(vol), np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return path


def make_checkpoint(folder: Path, dims: int) -> Path:
    if (folder / "model.safetensors").exists():
        return folder
    import torch

    from unetseg.checkpoint import save_checkpoint
    from unetseg.config import Config
    from unetseg.models import build_model

    cfg = Config()
    m = cfg.model
    m.spatial_dims, m.base_channels, m.depth, m.num_classes = dims, 8, 3, 2
    cfg.data.patch_size = [256, 256] if dims == 2 else [64, 64, 64]
    cfg.data.class_values = [0.0, 255.0]
    cfg.data.pixel_size = [0.5, 0.5] if dims == 2 else None
    cfg.infer.tile = [512, 512] if dims == 2 else [96, 96, 96]
    torch.manual_seed(0)
    return save_checkpoint(folder, build_model("unet", **m.build_kwargs()).eval(), cfg)


def predict(args: list[str], out: Path) -> dict[str, Any]:
    """One ``unetseg predict`` process: wall seconds and its peak RSS (``wait4``: the largest of it and the
    processes it waited for, e.g. dask workers)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "unetseg", "predict", *args, "--output", str(out)]
    print("$", " ".join(cmd), flush=True)
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = (err.read().strip().splitlines() or ["?"])[-1][:300]
    if proc.returncode != 0:
        return {"error": tail}
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def run_slides(work: Path, sizes: list[int], glass_side: int) -> dict[str, Any]:
    ck2 = make_checkpoint(work / "ckpt2d", 2)
    common = ["--device", "cpu", "--precision", "auto"]
    res: dict[str, Any] = {}
    # what every row pays before its first tile (imports, model load): a 256^2 image
    res["start-up (256^2 image)"] = predict(["--checkpoint", str(ck2), "--input",
                                             str(write_plain(work / "plain_256.tif", 256)), *common],
                                            work / "out")
    res["start-up (256^2 image)"]["mpx"] = 256**2 / 1e6
    plain = write_plain(work / "plain_4096.tif", 4096)
    res["in-memory 4096^2"] = predict(["--checkpoint", str(ck2), "--input", str(plain), *common],
                                      work / "out")
    # the same file streamed (--output-format forces it): reading, tiles and model are the same, the rest
    # is what streaming costs
    res["streamed 4096^2, the same plain TIFF"] = predict(
        ["--checkpoint", str(ck2), "--input", str(plain), *common, "--output-format", "ome-zarr"],
        work / "out")
    res["streamed 4096^2, the same plain TIFF"]["mpx"] = 4096**2 / 1e6
    for n in sizes:
        slide = write_slide(work / f"slide_{n}.ome.tif", (n, n))
        res[f"streamed {n}^2"] = predict(["--checkpoint", str(ck2), "--input", str(slide), *common],
                                         work / "out")
        res[f"streamed {n}^2"]["mpx"] = n * n / 1e6
    res["in-memory 4096^2"]["mpx"] = 4096**2 / 1e6
    glass = write_slide(work / f"glass_{glass_side}.ome.tif", (glass_side, glass_side), glass=0.9)
    for flag in ([], ["--skip-background"]):
        key = f"90% glass {glass_side}^2" + (" --skip-background" if flag else "")
        res[key] = predict(["--checkpoint", str(ck2), "--input", str(glass), *common, *flag], work / "out")
        res[key]["mpx"] = glass_side**2 / 1e6
    cohort = write_cohort(work / "cohort", 8)
    one = work / "slide_8192.ome.tif"
    write_slide(one, (8192, 8192))
    for n in (1, 2):
        res[f"cohort 8 x 2048^2, --dask local:{n}"] = predict(
            ["--checkpoint", str(ck2), "--input", str(cohort), *common, "--dask", f"local:{n}"], work / "out")
        res[f"cohort 8 x 2048^2, --dask local:{n}"]["mpx"] = 8 * 2048**2 / 1e6
        res[f"one 8192^2 slide, --dask local:{n}"] = predict(
            ["--checkpoint", str(ck2), "--input", str(one), *common, "--dask", f"local:{n}"], work / "out")
        res[f"one 8192^2 slide, --dask local:{n}"]["mpx"] = 8192**2 / 1e6
    return res


def run_volumes(work: Path, sides: list[int]) -> dict[str, Any]:
    """3D: a small volume for the start-up, the first side in memory and streamed, the others streamed only
    (the in-memory path needs the volume, an accumulator per class and the labels: 16+ GiB at 1024^3)."""
    ck3 = make_checkpoint(work / "ckpt3d", 3)
    rows = [("start-up (64^3 volume)", 64, "auto")]
    rows += [(f"3D {sides[0]}^3 in memory", sides[0], "auto")]
    rows += [(f"3D {side}^3 streamed", side, "ome-zarr") for side in sides]
    res: dict[str, Any] = {}
    for key, side, fmt in rows:
        vol = write_volume(work / f"volume_{side}.nii", side)  # uncompressed: memory-mapped
        res[key] = predict(["--checkpoint", str(ck3), "--input", str(vol), "--device", "cpu",
                            "--precision", "auto", "--output-format", fmt], work / "out")
        res[key]["mpx"] = side**3 / 1e6
    return res


def section(res: dict[str, Any], volumes: bool = False) -> str:
    facts = machine_facts(len(os.sched_getaffinity(0)))
    title = "## Volumes streamed (issue 14)" if volumes else "## Whole slides, volumes and cohorts (issue 14)"
    how = ("`.venv-bench/bin/python benchmarks/slides.py --part volumes` (one fresh `unetseg predict` "
           "process per row; small random-weight 3D U-Net, base 8, depth 3, tile 96^3, overlap 0.5 (the 3D "
           "default), Gaussian blending; uint16 NIfTI, uncompressed).  ") if volumes else (
        "`.venv-bench/bin/python benchmarks/slides.py` (one fresh `unetseg predict` process per row; "
        "small random-weight U-Net, base 8, depth 3, tile 512, overlap 0.25, Gaussian blending).  ")
    lines = [title, "", how,
             "; ".join(f"{k}: {v}" for k, v in facts.items()), "",
             "Mpx/s net: the pixels over the seconds after the start-up row's (imports, model load), which "
             "every process pays once.", "",
             "| input | seconds | Mpx/s | Mpx/s net of start-up | peak RSS MiB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    start = next((r.get("seconds", 0.0) for k, r in res.items() if k.startswith("start-up")), 0.0)
    for key, r in res.items():
        if "error" in r:
            lines.append(f"| {key} | failed: {r['error']} | | | |")
            continue
        rate = r["mpx"] / r["seconds"]
        net = "" if key.startswith("start-up") else f"{r['mpx'] / max(r['seconds'] - start, 1e-3):.2f}"
        lines.append(f"| {key} | {r['seconds']:.1f} | {rate:.2f} | {net} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--glass-side", type=int, default=8192, help="the mostly-glass slide's side")
    ap.add_argument("--sides3d", type=int, nargs="+", default=[256, 512, 1024],
                    help="volume sides: the first in memory and streamed, the others streamed")
    ap.add_argument("--part", choices=("all", "slides", "volumes"), default="all")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg_slides")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for part in ("slides", "volumes"):
        if args.part not in ("all", part):
            continue
        res = (run_slides(args.work, args.sizes, args.glass_side) if part == "slides"
               else run_volumes(args.work, args.sides3d))
        write_text(args.work / f"results_{part}.json", json.dumps(res, indent=1))
        text = section(res, volumes=part == "volumes")
        print(text)
        if not args.no_write:
            replace_section(REPO / "BENCHMARKS.md", part, text)

if __name__ == "__main__":
    main()
