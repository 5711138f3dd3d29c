"""The plain MONAI reference that ``benchmarks/real_data.py`` compares unetseg's recipes with.

What a MONAI user would write in an afternoon, on purpose without tuning: ``BasicUNet`` (features
32, 32, 64, 128, 256, 32; instance norm, LeakyReLU) + ``DiceCELoss(softmax, to_onehot_y)``, per-image
z-score normalisation, uniformly random 256x256 patches (zero-padded where the image is smaller) with
random flips and 90-degree rotations, Adam at a constant 1e-3, batch 4 (3D: 64^3 patches, batch 2, to fit
a CPU), trained for a fixed number of minutes, then ``monai.inferers.sliding_window_inference`` (roi =
patch, overlap 0.25, gaussian blending) on every validation image. It shares only file decoding with
unetseg (``unetseg.io.images``); the masks it writes hold class indices in the order of ``--class-values``.

Needs MONAI, which the project's own ``.venv`` does not have (``make bench`` makes ``.venv-bench``)::

    .venv-bench/bin/python benchmarks/reference_monai.py --train TRAIN_DIR --predict VAL_DIR/images \\
        --out PRED_DIR --minutes 10 --class-values 255 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet

from unetseg.io.images import list_images, read_image, read_mask, stem_of, write_mask


def zscore(image: np.ndarray) -> np.ndarray:
    """Per-image z-score over all pixels and channels (MONAI ``NormalizeIntensity()``'s default)."""
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-8)


def encode(mask: np.ndarray, values: list[float]) -> np.ndarray:
    """Class indices of a mask: value ``values[k]`` -> ``k`` (any other value is an error)."""
    out = np.full(mask.shape, -1, dtype=np.int64)
    for k, v in enumerate(values):
        out[mask == v] = k
    if (out < 0).any():
        raise SystemExit(f"mask values {np.unique(mask[out < 0])[:5]} are not in --class-values {values}")
    return out


def load_training(folder: Path, values: list[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(normalised image (C, *spatial), labels) for every pair of ``folder/images`` + ``folder/masks``."""
    masks = {stem_of(p): p for p in list_images(folder / "masks")}
    pairs = []
    for path in list_images(folder / "images"):
        image, _ = read_image(path)
        mask, _ = read_mask(masks[stem_of(path)])
        pairs.append((zscore(image), encode(mask, values)))
    return pairs


def random_patch(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly placed patch (zero-padded where the image is smaller), randomly flipped and rotated."""
    d = labels.ndim
    pad = [(0, max(0, size - n)) for n in labels.shape]
    if any(p[1] for p in pad):  # as MONAI SpatialPad (constant 0) before RandSpatialCrop
        image, labels = np.pad(image, [(0, 0), *pad]), np.pad(labels, pad)
    start = [int(rng.integers(0, n - size + 1)) for n in labels.shape]
    box = tuple(slice(s, s + size) for s in start)
    img, lab = image[(slice(None), *box)], labels[box]
    for axis in range(d):  # RandFlip(prob=0.5) per axis
        if rng.random() < 0.5:
            img, lab = np.flip(img, axis + 1), np.flip(lab, axis)
    if rng.random() < 0.5:  # RandRotate90(prob=0.5, max_k=3) in the last two axes
        k = int(rng.integers(1, 4))
        img, lab = np.rot90(img, k, axes=(d - 1, d)), np.rot90(lab, k, axes=(d - 2, d - 1))
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def train(pairs, *, spatial_dims: int, num_classes: int, patch: int, batch_size: int, minutes: float,
          seed: int, device: torch.device) -> tuple[torch.nn.Module, int]:
    """Train BasicUNet for ``minutes`` of wall time; returns the model and the number of steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    in_channels = pairs[0][0].shape[0]
    model = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                      features=(32, 32, 64, 128, 256, 32)).to(device)
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start, steps = time.monotonic(), 0
    while time.monotonic() - start < minutes * 60:
        batch = [random_patch(*pairs[int(rng.integers(len(pairs)))], patch, rng) for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
        y = torch.from_numpy(np.stack([b[1] for b in batch]))[:, None].to(device)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if steps % 25 == 0:
            minutes_done = (time.monotonic() - start) / 60
            print(f"step {steps}: loss {float(loss):.4f}, {minutes_done:.2f} min", flush=True)
    return model, steps


@torch.no_grad()
def predict_folder(model: torch.nn.Module, folder: Path, out: Path, *, patch: int, spatial_dims: int,
                   device: torch.device) -> int:
    """Write ``out/<stem>.png`` (2D) or ``.nii.gz`` (3D) class-index masks for every image of ``folder``."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    files = list_images(folder)
    for path in files:
        image, meta = read_image(path)
        x = torch.from_numpy(zscore(image))[None].to(device)
        logits = sliding_window_inference(x, roi_size=(patch,) * spatial_dims, sw_batch_size=4,
                                          predictor=model, overlap=0.25, mode="gaussian")
        labels = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        write_mask(out / f"{stem_of(path)}{'.png' if spatial_dims == 2 else '.nii.gz'}", labels, meta)
    return len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, required=True, help="folder with images/ and masks/")
    ap.add_argument("--predict", type=Path, required=True, help="folder of images to segment")
    ap.add_argument("--out", type=Path, required=True, help="folder for the predicted masks")
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--class-values", type=float, nargs="+", required=True, help="mask values, class order")
    ap.add_argument("--patch", type=int, default=None, help="patch side (default 256 in 2D, 64 in 3D)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 4 in 2D, 2 in 3D")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    device = torch.device(args.device)
    pairs = load_training(args.train, list(args.class_values))
    spatial_dims = pairs[0][1].ndim
    patch = args.patch or (256 if spatial_dims == 2 else 64)
    batch_size = args.batch_size or (4 if spatial_dims == 2 else 2)
    t0 = time.monotonic()
    model, steps = train(pairs, spatial_dims=spatial_dims, num_classes=len(args.class_values), patch=patch,
                         batch_size=batch_size, minutes=args.minutes, seed=args.seed, device=device)
    train_min = (time.monotonic() - t0) / 60
    t1 = time.monotonic()
    n = predict_folder(model, args.predict, args.out, patch=patch, spatial_dims=spatial_dims, device=device)
    summary = {"steps": steps, "train_minutes": round(train_min, 3), "patch": patch, "batch_size": batch_size,
               "predict_seconds": round(time.monotonic() - t1, 1), "images": n,
               "parameters": sum(p.numel() for p in model.parameters())}
    print("REFERENCE " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
