"""``unetseg demo``: the whole workflow on synthetic cells, in about two minutes on two CPU cores.

Synthesize a dataset and a held-out test set, train a small U-Net, evaluate on the held-out images,
predict them, and write overlays and training curves.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from unetseg.config import Config
from unetseg.errors import OutputError
from unetseg.evaluation.result import EvaluationResult


def demo_config(data: Path, run: Path, minutes: float, device: str, seed: int) -> Config:
    """The demo's recipe: a width-16 U-Net on 128x128 patches, Dice+CE, AdamW with a poly schedule."""
    cfg = Config()
    cfg.data.data = str(data)
    cfg.data.val_fraction = 0.2
    cfg.data.patch_size = [128, 128]
    cfg.data.num_workers = 1
    cfg.model.name = "unet"
    cfg.model.base_channels = 16
    cfg.model.depth = 4
    cfg.train.out = str(run)
    cfg.train.epochs = 1000  # the time budget ends the run
    cfg.train.iters_per_epoch = 20
    cfg.train.batch_size = 8
    cfg.train.lr = 3e-3
    cfg.train.max_minutes = minutes
    cfg.train.device = device
    cfg.train.seed = seed
    cfg.train.val_interval = 2
    return cfg


def run_demo(
    out: str | Path = "demo_out",
    *,
    minutes: float = 2.0,
    device: str = "auto",
    seed: int = 0,
    n_train: int = 24,
    n_test: int = 6,
    size: tuple[int, int] = (256, 256),
    quiet: bool = False,
    overwrite: bool = False,
) -> EvaluationResult:
    """Run the demo into ``out``; return the evaluation result (with ``mean_foreground_dice``).

    An ``out`` that already holds files is refused unless ``overwrite`` (then the demo replaces its own
    earlier results there)."""
    from unetseg.data.synthetic import make_dataset
    from unetseg.evaluation import evaluate
    from unetseg.inference import predict_files
    from unetseg.training import train

    console = Console(stderr=True, quiet=quiet)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out}: holds an earlier demo (or other files); pass --overwrite to replace the "
                          "demo's results there, or choose another --out")
    console.rule("[bold]unetseg demo")
    train_dir = make_dataset(out / "data" / "train", n=n_train, size=size, kind="cells", seed=seed)
    test_dir = make_dataset(out / "data" / "test", n=n_test, size=size, kind="cells", seed=seed + 10_000)
    console.print(
        f"synthetic data: {n_train} training images in {train_dir}, {n_test} held out in {test_dir}"
    )
    run = out / "run"
    cfg = demo_config(train_dir, run, minutes, device, seed)
    train(cfg, quiet=quiet, overwrite=overwrite)
    result = evaluate(
        run,
        test_dir,
        out_json=out / "evaluation.json",
        overlays=out / "overlays",
        report=out / "report.html",
        device=device,
        quiet=quiet,
        overwrite=overwrite,
    )
    predict_files(run, test_dir / "images", out / "predictions", overlay=True, device=device,
                  progress=not quiet, overwrite=overwrite)
    console.rule("[bold]done")
    console.print(
        f"held-out mean foreground Dice: [bold]{result.mean_foreground_dice:.4f}[/bold]\n"
        f"  checkpoint      {run / 'best'}\n"
        f"  training curves {run / 'curves.png'}  (log: {run / 'log.txt'}, {run / 'metrics.csv'})\n"
        f"  evaluation      {out / 'evaluation.json'}\n"
        f"  report          {out / 'report.html'}\n"
        f"  overlays        {out / 'overlays'}\n"
        f"  predictions     {out / 'predictions'}"
    )
    return result
