"""The measurements ``benchmarks/run.py`` runs, each in a child process (``run.py --child KIND``).

Each function takes the spec dict the parent sent and ends with :func:`_common.emit` of its result.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from _common import child_setup, count_flops, emit, interleaved, peak_rss_mib, rss_mib, timed
from _contestants import build


def _unetseg_training_path(spec: dict[str, Any]) -> tuple:
    """What unetseg's trainer picks on this CPU for 2D: (autocast dtype or None, channels_last)."""
    import torch

    from unetseg.runtime import autocast_dtype, use_channels_last

    cpu = torch.device("cpu")
    dtype = autocast_dtype(spec.get("precision", "auto"), cpu)
    return dtype, use_channels_last(spec.get("channels_last", "auto"), cpu, 2)


def _train_step(net: Any, params: Any, x: Any, y: Any, dtype: Any) -> Any:
    """One optimisation step closure: forward (under autocast when ``dtype``), cross-entropy, AdamW."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(params, lr=1e-3)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = net(x)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _batch(batch: int, size: int, channels_last: bool) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    y = torch.randint(0, 2, (batch, size, size), generator=g)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def train(spec: dict[str, Any]) -> None:
    """Training throughput of one network: warm-up steps, then the median of ``repeats`` steps."""
    child_setup(spec)
    import torch

    impl, name, b, s = spec["impl"], spec["name"], spec["batch"], spec["size"]
    model = build(impl, name).train()
    dtype, cl = _unetseg_training_path(spec) if impl == "unetseg" else (None, False)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if spec.get("compile") else model
    x, y = _batch(b, s, cl)
    step = _train_step(net, model.parameters(), x, y, dtype)
    before = rss_mib()
    median, times, first = timed(step, spec["warmup"], spec["repeats"])
    peak = peak_rss_mib()  # before counting FLOPs, which copies the model
    emit(
        {
            "params": sum(p.numel() for p in model.parameters()),
            "fwd_flops_per_patch": count_flops(model, (1, 1, s, s), backward=False),
            "step_flops": count_flops(model, (b, 1, s, s), backward=True),
            "step_s": median,
            "times": times,
            "first_s": first,
            "patches_per_s": b / median,
            "rss_before_mib": before,
            "peak_rss_mib": peak,
            "precision": str(dtype or "fp32").replace("torch.", ""),
            "channels_last": cl,
        }
    )


def weights(spec: dict[str, Any]) -> None:
    """Train unetseg's ``unet`` briefly on synthetic cells and save its weights (``spec["out"]``), so the
    sliding-window comparison runs a network with confident outputs: an untrained one depends so much on
    each tile's zero padding that two valid tilings disagree far from any near tie."""
    child_setup(spec)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from unetseg.data.synthetic import make_image

    model = build("unetseg", "unet").train()
    pairs = [make_image("cells", (384, 384), seed=i) for i in range(4)]
    images = np.stack([(im - im.mean()) / im.std() for im, _ in pairs]).astype(np.float32)
    labels = np.stack([m > 0 for _, m in pairs]).astype(np.int64)
    rng, p, b = np.random.default_rng(0), spec["patch"], spec["batch"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(spec["steps"]):
        boxes = rng.integers(0, [len(images), 384 - p, 384 - p], (b, 3))  # (image, top, left) rows
        x = torch.from_numpy(np.stack([images[i, y : y + p, c : c + p] for i, y, c in boxes]))
        y = torch.from_numpy(np.stack([labels[i, y : y + p, c : c + p] for i, y, c in boxes]))
        loss = F.cross_entropy(model(x[:, None]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    save_file(model.state_dict(), spec["out"])
    emit({"first_loss": losses[0], "last_loss": float(np.mean(losses[-5:]))})


def sliding(spec: dict[str, Any]) -> None:
    """Sliding-window prediction of the image in ``spec["image"]``: unetseg's Predictor at its defaults
    (as ``unetseg predict`` loads a checkpoint: BatchNorm folded) or MONAI's ``sliding_window_inference``
    at its defaults, both with the same U-Net weights and Gaussian blending of softmax probabilities.

    Afterwards (untimed) the top-left ``check_size`` square is predicted again for an equivalence check:
    there both tile grids coincide, and MONAI is given unetseg's Gaussian map (its own is floored at 1e-3).
    """
    child_setup(spec)
    import numpy as np
    import torch

    model = build("unetseg", "unet")
    if spec.get("weights"):
        from safetensors.torch import load_file

        model.load_state_dict(load_file(spec["weights"]))
    model.eval()
    image = np.load(spec["image"])
    tile, overlap, batch = spec["tile"], spec["overlap"], spec["batch"]
    if spec["impl"] == "unetseg":
        from unetseg.inference import Predictor, TorchEngine

        engine = TorchEngine(model, "cpu", "auto", fuse=True)
        predictor = Predictor(engine, tile=(tile, tile), overlap=overlap, blend="gaussian", batch_size=batch)

        def run(img: np.ndarray, same_map: bool = False) -> np.ndarray:
            return predictor.predict_proba(img)

        tiles = predictor.plan(image.shape[1:]).num_tiles
        settings = f"precision {engine.dtype or 'fp32'}, channels_last {engine.channels_last}, BN folded"
    else:
        from monai.inferers import sliding_window_inference

        from unetseg.inference import gaussian_importance_map

        ours = torch.from_numpy(gaussian_importance_map((tile, tile)))

        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model(x), dim=1)

        def run(img: np.ndarray, same_map: bool = False) -> np.ndarray:
            with torch.inference_mode():
                out = sliding_window_inference(
                    torch.from_numpy(img)[None],
                    (tile, tile),
                    batch,
                    forward,
                    overlap=overlap,
                    mode="gaussian",
                    roi_weight_map=ours if same_map else None,
                )
            return out[0].numpy()

        tiles, settings = None, "fp32 eager"
    before = rss_mib()
    run(_crop(image, spec["warmup_size"]))  # warm-up: the same tile shapes on a small image
    last: list[np.ndarray] = []

    def timed_run() -> None:
        last.clear()  # drop the previous output first, so it does not count towards the peak
        last.append(run(image))

    median, times, _ = timed(timed_run, 0, max(1, spec["repeats"]))
    peak = peak_rss_mib()
    np.save(spec["out"], last.pop())
    np.save(spec["check_out"], run(_crop(image, spec["check_size"]), same_map=True))
    emit(
        {
            "median_s": median,
            "times": times,
            "tiles": tiles,
            "settings": settings,
            "rss_before_mib": before,
            "peak_rss_mib": peak,
        }
    )


def _crop(image: Any, size: int) -> Any:
    import numpy as np

    return np.ascontiguousarray(image[:, :size, :size])


def _variant_model(base: Any, variant: str, inference: bool) -> tuple[Any, bool, Any]:
    """``(callable network, channels_last, autocast dtype)`` for a variant like ``fuse+cl+compile``."""
    import torch

    from unetseg.inference.engines import fuse_conv_bn

    parts = set(variant.split("+"))
    model = copy.deepcopy(base)
    if "fuse" in parts and inference:
        model = fuse_conv_bn(model)
    cl = "cl" in parts
    if cl:
        model = model.to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if "bf16" in parts else None
    net = torch.compile(model) if "compile" in parts else model
    return (net, model), cl, dtype


def _onnx_runner(model: Any, x: Any, threads: int) -> Any:
    """ONNX Runtime session of ``model`` (exported once) as a callable on ``x``."""
    import warnings

    import onnxruntime as ort
    import torch

    from unetseg.inference.engines import fuse_conv_bn

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fuse_conv_bn(copy.deepcopy(model)),
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    arr = x.numpy()
    return lambda: torch.from_numpy(session.run(None, {"x": arr})[0])


def fastpaths(spec: dict[str, Any]) -> None:
    """One unetseg U-Net, several ways (``fp32``, ``cl``, ``fuse``, ``bf16``, ``compile``, ``ort`` joined by
    ``+``), timed in turns: inference of a batch of tiles or one training step. Inference variants also
    report their largest absolute logit difference from plain fp32."""
    child_setup(spec)
    import torch

    inference = spec["mode"] == "infer"
    base = build("unetseg", "unet")
    base = base.eval() if inference else base.train()
    x, y = _batch(spec["batch"], spec["size"], False)
    fns, outputs, errors = {}, {}, {}
    for variant in spec["variants"]:
        if variant == "ort":
            try:
                fns[variant] = _onnx_runner(base, x, spec["threads"])
            except Exception as e:  # noqa: BLE001 - report it in the table, measure the rest
                errors[variant] = f"{type(e).__name__}: {str(e)[:120]}"
            continue
        (net, model), cl, dtype = _variant_model(base, variant, inference)
        xv = x.contiguous(memory_format=torch.channels_last) if cl else x
        if inference:
            fns[variant] = _inference_call(net, xv, dtype)
        else:
            fns[variant] = _train_step(net, model.parameters(), xv, y, dtype)
    result = interleaved(fns, spec["warmup"], spec["repeats"])
    if inference:
        with torch.inference_mode():
            ref = base(x)
            for variant, fn in fns.items():
                outputs[variant] = float((fn().float() - ref).abs().max())
        for variant in result:
            result[variant]["max_abs_diff"] = outputs[variant]
    emit({"variants": result, "errors": errors, "peak_rss_mib": peak_rss_mib()})


def _inference_call(net: Any, x: Any, dtype: Any) -> Any:
    import torch

    def call() -> Any:
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None),
        ):
            return net(x)

    return call


def matmul(spec: dict[str, Any]) -> None:
    """The machine's ceiling: GFLOP/s of a large fp32 matrix product (and bf16) at the same threads."""
    child_setup(spec)
    import torch

    from unetseg.runtime import cpu_has_fast_bf16

    out = {}
    for dtype, n in (("float32", spec["n"]), ("bfloat16", spec["n"] if cpu_has_fast_bf16() else 256)):
        a = torch.randn(n, n).to(getattr(torch, dtype))
        b = torch.randn(n, n).to(getattr(torch, dtype))
        median, _, _ = timed(lambda a=a, b=b: a @ b, 2, spec["repeats"])
        out[dtype] = {"n": n, "gflops": 2 * n**3 / median / 1e9}
    emit(out)


def data(spec: dict[str, Any]) -> None:
    """Augmented training patches per second from the real ``PatchDataset`` with 0 and 2 workers."""
    child_setup(spec)
    from data_pipeline import samples_per_second

    from unetseg.config import Config
    from unetseg.data.prepare import prepare_data
    from unetseg.data.sampling import PatchDataset
    from unetseg.data.synthetic import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = make_dataset(Path(tmp) / "cells", n=8, size=(512, 512), kind="cells", seed=0)
        cfg = Config()
        cfg.data.data, cfg.data.patch_size = str(root), [spec["size"]] * 2
        prep = prepare_data(cfg)
        ds = PatchDataset(
            prep.train_cases + prep.val_cases,
            (spec["size"],) * 2,
            data_cfg=cfg.data,
            augment_cfg=cfg.augment,
            class_map=prep.class_map,
            samples_per_epoch=spec["samples"],
            seed=0,
        )
        rates = {str(w): samples_per_second(ds, w, spec["batch"]) for w in (0, 2)}
    emit({"patches_per_s": rates})


CHILDREN = {
    "train": train,
    "weights": weights,
    "sliding": sliding,
    "fastpaths": fastpaths,
    "matmul": matmul,
    "data": data,
}
