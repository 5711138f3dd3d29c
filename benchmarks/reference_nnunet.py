"""nnU-Net v2 (2.8.1) as a reference peer: trained on the CPU for a wall-clock budget, as its users run it.

What it does, in the order a user of nnU-Net would:

1. writes the training pairs as an nnU-Net raw dataset (``$nnUNet_raw/Dataset001_Reference``):
   ``imagesTr/case_NNNN_0000.png`` + ``labelsTr/case_NNNN.png`` for 2D, ``.nii.gz`` for 3D, and a
   ``dataset.json`` (``channel_names``, ``labels``, ``numTraining``, ``file_ending``). Masks are encoded
   through ``--class-values`` (value ``v[k]`` -> label ``k``: nnU-Net wants consecutive labels, 0 =
   background). RGB images follow nnU-Net's own natural-image convention (its Dataset120_RoadSegmentation
   example, read by ``NaturalImage2DIO``): ONE ``_0000.png`` file holding the three colour channels, with
   ``channel_names`` ``{"0": "R", "1": "G", "2": "B"}``; grey images and NIfTI volumes are one channel
   (``"image"``). These names mean nnU-Net's default per-channel z-score normalisation. 2D images that PNG
   cannot hold (float, int32) go in as ``.tif`` (which ``NaturalImage2DIO`` also reads); 3D NIfTI volumes are
   copied as they are (a 4D one is split into ``_0000``, ``_0001``, ...);
2. ``nnUNetv2_plan_and_preprocess -d 1 -c 2d|3d_fullres -np 2 -npfp 2 --verify_dataset_integrity`` (the
   default ``ExperimentPlanner``, ``nnUNetPlans``);
3. ``nnUNetv2_train 1 2d|3d_fullres all -tr nnUNetTrainerClock -device cpu``. ``nnUNetTrainerClock`` is
   ``nnUNetTrainer`` with a clock (see ``_clock_trainer_class``): it starts when nnU-Net's own
   ``on_train_start`` (data loaders, unpacking) is done, is checked before every training and online
   validation iteration, ends training when ``--minutes`` have passed, even in the middle of an epoch
   (250 training + 50 validation iterations, which a CPU may not finish), and drives nnU-Net's poly learning
   rate per iteration: ``lr = 0.01 * (1 - elapsed / budget) ** 0.9``. Its online validation iterations stay
   (they count against the budget, as in nnU-Net); an epoch cut short skips them. Network, loss (Dice + CE,
   deep supervision), SGD (momentum 0.99, Nesterov, weight decay 3e-5), augmentation, data loader,
   foreground oversampling, batch and patch size are all nnU-Net's. The final ``checkpoint_final.pth`` is
   written by nnU-Net's ``on_train_end``. nnU-Net finds the class through the ``nnUNet_extTrainer`` folder
   list (supported by 2.8.1's ``recursive_find_trainer_class_by_name``): this script copies itself into
   ``WORK/ext_trainer`` and builds the class when nnU-Net's search asks the module for it. After training,
   ``nnUNetv2_train`` would predict every validation case, which for fold ``all`` is every training case,
   only to score it; the trainer skips that (``--final-validation`` keeps it, outside the clock);
4. ``nnUNetv2_predict -f all -tr nnUNetTrainerClock -chk checkpoint_final.pth -device cpu`` with its defaults
   (mirroring on, step 0.5, gaussian blending, 3 + 3 worker processes), then copies its masks (PNG for 2D,
   NIfTI for 3D: class indices in the order of ``--class-values``) to ``--out/<stem>``.

Each nnU-Net command runs in a child process ``python reference_nnunet.py --nnunet COMMAND ARGS``: nnU-Net's
console-script function, in-process, after a meta-path blocker for ``timm``, ``torchvision`` and the module
of nnU-Net's Primus trainers. nnU-Net 2.8.1 looks for trainer classes (also our own, before it reads
``nnUNet_extTrainer``) by importing every module of ``nnunetv2/training/nnUNetTrainer``;
``primus/primus_trainers.py`` imports ``timm``, which imports ``torchvision``, and the index's torchvision is
a CUDA build ("operator torchvision::nms does not exist" against the CPU torch). ``make bench`` therefore
uninstalls ``torchvision`` and ``timm`` after installing nnunetv2, and the blocker makes the Primus module
raise ``ModuleNotFoundError`` under its own name, which nnU-Net's search takes as "skip this module".

Settings: ``nnUNet_n_proc_DA`` (data augmentation worker processes) is nnU-Net's default rule,
``min(12, usable CPU cores)`` (2 on a 2-core machine), unless it is already set; the torch threads are
nnU-Net's own choice (``-device cpu`` sets ``torch.set_num_threads(cpu_count)``) and are reported.
``--seed`` seeds torch/numpy in the training process (weight initialisation); nnU-Net's augmentation workers
are unseeded by design, so runs are not bit-reproducible.

Runs in its own venv without unetseg (``make bench`` makes ``.venv-nnunet``)::

    .venv-nnunet/bin/python benchmarks/reference_nnunet.py --train TRAIN_DIR --predict VAL_DIR/images \\
        --out PRED_DIR --minutes 10 --class-values 0 255

and ends with one line ``REFERENCE {json}`` (steps, train_minutes, plan, configuration, timings).
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET_ID = 1
DATASET = "Dataset001_Reference"
TRAINER = "nnUNetTrainerClock"
PLANS = "nnUNetPlans"
BUDGET_ENV = "REFERENCE_NNUNET_BUDGET_S"
SEED_ENV = "REFERENCE_NNUNET_SEED"
FINAL_VAL_ENV = "REFERENCE_NNUNET_FINAL_VALIDATION"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".nii", ".nii.gz")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".nii", ".nii.gz")
# nnU-Net's Primus trainers import timm (-> torchvision); nnU-Net's trainer search skips a module whose import
# raises ModuleNotFoundError under the module's own name.
BLOCKED_EXACT = ("nnunetv2.training.nnUNetTrainer.primus.primus_trainers",)
BLOCKED_PACKAGES = ("timm", "torchvision")


# --- files -----------------------------------------------------------------------------------------------

def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def stem_of(path: Path) -> str:
    return path.name[: len(path.name) - len(suffix_of(path))]


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and suffix_of(p) in suffixes)
    if not files:
        raise SystemExit(f"{folder}: no files with suffix {', '.join(suffixes)}")
    return files


def is_nifti(path: Path) -> bool:
    return suffix_of(path) in (".nii", ".nii.gz")


def read_2d(path: Path, *, mask: bool) -> np.ndarray:
    """A 2D image as (H, W) or (H, W, 3); a mask as (H, W) values."""
    if suffix_of(path) in (".tif", ".tiff"):
        import tifffile

        array = np.asarray(tifffile.imread(path))
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    else:
        from PIL import Image

        with Image.open(path) as im:
            if not mask and im.mode in ("P", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif not mask and im.mode in ("1", "LA"):
                im = im.convert("L")
            array = np.asarray(im)
    array = np.squeeze(array)
    if mask:
        if array.ndim != 2:
            raise SystemExit(f"{path}: a mask must be one channel, got shape {array.shape}")
        return array
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]  # alpha is no image content
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise SystemExit(f"{path}: expected a grey or RGB 2D image, got shape {array.shape}")
    return array


def encode(mask: np.ndarray, values: list[float], path: Path) -> np.ndarray:
    """Class indices of a mask: value ``values[k]`` -> ``k`` (any other value is an error)."""
    out = np.full(mask.shape, -1, dtype=np.int32)
    for k, v in enumerate(values):
        out[mask == v] = k
    if (out < 0).any():
        bad = np.unique(mask[out < 0])[:5]
        raise SystemExit(f"{path}: mask values {bad} are not in --class-values {values}")
    return out.astype(np.uint8 if len(values) <= 255 else np.uint16)


def png_ok(image: np.ndarray) -> bool:
    return image.dtype == np.uint8 or (image.dtype == np.uint16 and image.ndim == 2)


def write_2d(path: Path, array: np.ndarray) -> None:
    if path.suffix == ".png":
        from PIL import Image

        Image.fromarray(array).save(path)
    else:
        import tifffile

        tifffile.imwrite(path, array)


def write_nifti_image(src: Path, folder: Path, case: str) -> int:
    """``folder/<case>_0000.nii.gz`` (copied) or one file per channel of a 4D volume; returns channels."""
    import nibabel as nib

    img = nib.load(str(src))
    if len(img.shape) == 4 and img.shape[3] > 1:
        data = np.asarray(img.dataobj)
        for c in range(img.shape[3]):
            nib.save(nib.Nifti1Image(data[..., c], img.affine), str(folder / f"{case}_{c:04d}.nii.gz"))
        return img.shape[3]
    if len(img.shape) != 3 and not (len(img.shape) == 4 and img.shape[3] == 1):
        raise SystemExit(f"{src}: expected a 3D volume, got shape {img.shape}")
    if suffix_of(src) == ".nii.gz" and len(img.shape) == 3:
        shutil.copyfile(src, folder / f"{case}_0000.nii.gz")
    else:
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj).reshape(img.shape[:3]), img.affine, img.header),
                 str(folder / f"{case}_0000.nii.gz"))
    return 1


def write_nifti_labels(src: Path, dst: Path, values: list[float]) -> None:
    import nibabel as nib

    img = nib.load(str(src))
    labels = encode(np.asarray(img.dataobj).reshape(img.shape[:3]), values, src)
    header = img.header.copy()
    header.set_data_dtype(labels.dtype)
    nib.save(nib.Nifti1Image(labels, img.affine, header), str(dst))


def write_raw_dataset(train: Path, predict: Path, raw: Path, test_dir: Path, values: list[float]
                      ) -> tuple[bool, dict[str, str], int]:
    """The nnU-Net raw dataset and the images to predict; returns (3D?, {test case: stem}, cases)."""
    images = list_files(train / "images", IMAGE_SUFFIXES)
    masks = {stem_of(p): p for p in list_files(train / "masks", MASK_SUFFIXES)}
    images = [p for p in images if stem_of(p) in masks]
    if not images:
        raise SystemExit(f"{train}: no image in images/ has a mask in masks/ with the same stem")
    tests = list_files(predict, IMAGE_SUFFIXES)
    three_d = is_nifti(images[0])
    if any(is_nifti(p) != three_d for p in images + tests):
        raise SystemExit("mixed 2D and NIfTI files: the training and prediction images must be all one kind")
    folder = raw / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    test_dir.mkdir(parents=True)
    names = {}
    if three_d:
        ending, channels = ".nii.gz", set()
        for i, path in enumerate(images):
            channels.add(write_nifti_image(path, folder / "imagesTr", f"case_{i:04d}"))
            write_nifti_labels(masks[stem_of(path)], folder / "labelsTr" / f"case_{i:04d}.nii.gz", values)
        for i, path in enumerate(tests):
            channels.add(write_nifti_image(path, test_dir, f"test_{i:04d}"))
            names[f"test_{i:04d}"] = stem_of(path)
        if len(channels) != 1:
            raise SystemExit(f"the volumes have different numbers of channels: {sorted(channels)}")
        n_channels = channels.pop()
        channel_names = {str(c): "image" if n_channels == 1 else f"channel{c}" for c in range(n_channels)}
    else:
        train_images = [read_2d(p, mask=False) for p in images]
        test_images = [read_2d(p, mask=False) for p in tests]
        rgb = any(a.ndim == 3 for a in train_images)
        if rgb:  # nnU-Net needs one channel count: grey images become RGB beside RGB ones
            train_images = [a if a.ndim == 3 else np.repeat(a[..., None], 3, -1) for a in train_images]
            test_images = [a if a.ndim == 3 else np.repeat(a[..., None], 3, -1) for a in test_images]
        elif any(a.ndim == 3 for a in test_images):
            raise SystemExit("the training images are grey but some images to predict are RGB")
        ending = ".png" if all(png_ok(a) for a in train_images + test_images) else ".tif"
        for i, (path, image) in enumerate(zip(images, train_images, strict=True)):
            mask_path = masks[stem_of(path)]
            labels = encode(read_2d(mask_path, mask=True), values, mask_path)
            if labels.shape != image.shape[:2]:
                raise SystemExit(f"{mask_path}: shape {labels.shape} != image shape {image.shape[:2]}")
            write_2d(folder / "imagesTr" / f"case_{i:04d}_0000{ending}", image)
            write_2d(folder / "labelsTr" / f"case_{i:04d}{ending}", labels)
        for i, (path, image) in enumerate(zip(tests, test_images, strict=True)):
            write_2d(test_dir / f"test_{i:04d}_0000{ending}", image)
            names[f"test_{i:04d}"] = stem_of(path)
        channel_names = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "image"}
    labels_json = {"background": 0, **{f"class{k}": k for k in range(1, len(values))}}
    dataset = {"channel_names": channel_names, "labels": labels_json, "numTraining": len(images),
               "file_ending": ending, "name": "Reference",
               "description": f"written by benchmarks/reference_nnunet.py from {train}; "
                              f"label k = mask value {values}[k]"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return three_d, names, len(images)


def collect_predictions(pred_dir: Path, out: Path, names: dict[str, str], three_d: bool) -> int:
    """nnU-Net's ``<case>.png|.tif|.nii.gz`` masks -> ``out/<stem>.png`` (2D) or ``.nii.gz`` (3D)."""
    out.mkdir(parents=True, exist_ok=True)
    for case, stem in names.items():
        if three_d:
            shutil.copyfile(pred_dir / f"{case}.nii.gz", out / f"{stem}.nii.gz")
            continue
        found = [p for p in (pred_dir / f"{case}.png", pred_dir / f"{case}.tif") if p.exists()]
        if not found:
            raise SystemExit(f"nnU-Net wrote no prediction for {case} ({stem}) in {pred_dir}")
        labels = read_2d(found[0], mask=True)
        write_2d(out / f"{stem}.png", labels.astype(np.uint8 if labels.max() < 256 else np.uint16))
    return len(names)


# --- nnU-Net's commands, in a child process ---------------------------------------------------------------

class _Blocker(importlib.abc.MetaPathFinder):
    """Makes the Primus trainers' module, timm and torchvision unimportable (ModuleNotFoundError)."""

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        if fullname in BLOCKED_EXACT or top in BLOCKED_PACKAGES:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by reference_nnunet.py: the "
                                      "Primus trainers need timm/torchvision, left out of this CPU venv)",
                                      name=fullname)
        return None


def run_nnunet_command(name: str, argv: list[str]) -> None:
    """Run nnU-Net's console script ``name`` in this process, as its own executable would."""
    from importlib.metadata import entry_points

    if not any(isinstance(f, _Blocker) for f in sys.meta_path):
        sys.meta_path.insert(0, _Blocker())
    (entry,) = entry_points(group="console_scripts", name=name)
    sys.argv = [name, *argv]
    sys.exit(entry.load()())


def nnunet(name: str, args: list[str], env: dict[str, str]) -> float:
    """Run an nnU-Net command in a child process; returns its wall seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--nnunet", name, *args]
    print(f"+ {name} {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    done = subprocess.run(cmd, env=env)
    if done.returncode:
        raise SystemExit(f"{name} failed (exit code {done.returncode})")
    return time.monotonic() - t0


# --- the trainer ------------------------------------------------------------------------------------------

def _clock_trainer_class():
    """``nnUNetTrainerClock``: nnU-Net's default trainer; a wall clock ends training and drives the poly lr.

    Overrides ``__init__`` (reads the budget and seed from the environment), ``configure_optimizers``
    (nnU-Net's SGD, the poly schedule over the clock), ``on_train_start`` (starts the clock after nnU-Net's
    setup), ``run_training`` (nnU-Net's loop with a clock check before every iteration), ``on_train_end``
    (writes ``clock.json`` beside the checkpoints, then nnU-Net's own: ``checkpoint_final.pth``) and
    ``perform_actual_validation`` (skipped unless asked for; it only scores the training cases for fold all).
    """
    import random

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class ClockPolyLR:
        """nnU-Net's ``PolyLRScheduler`` (exponent 0.9), elapsed / budget in place of epoch / num_epochs."""

        def __init__(self, optimizer, initial_lr: float, trainer) -> None:
            self.optimizer, self.initial_lr, self.trainer = optimizer, initial_lr, trainer
            self.step()

        def step(self, current_step=None) -> None:  # nnU-Net passes its epoch: the clock decides
            fraction = min(1.0, self.trainer.elapsed() / self.trainer.budget_s)
            lr = self.initial_lr * (1.0 - fraction) ** 0.9
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._last_lr = [lr] * len(self.optimizer.param_groups)

        def get_last_lr(self) -> list[float]:
            return self._last_lr

    class nnUNetTrainerClock(nnUNetTrainer):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.budget_s = float(os.environ.get(BUDGET_ENV, "600"))
            seed = int(os.environ.get(SEED_ENV, "0"))
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            self.clock_start = None
            self.setup_seconds = self.train_seconds = 0.0
            self.steps = self.val_steps = self.epochs_done = 0
            self.stopped_mid_epoch = False

        def elapsed(self) -> float:
            return 0.0 if self.clock_start is None else time.monotonic() - self.clock_start

        def time_up(self) -> bool:
            return self.elapsed() >= self.budget_s

        def configure_optimizers(self):
            optimizer, _ = super().configure_optimizers()
            return optimizer, ClockPolyLR(optimizer, self.initial_lr, self)

        def on_train_start(self):
            t0 = time.monotonic()
            super().on_train_start()
            self.clock_start = time.monotonic()
            self.setup_seconds = self.clock_start - t0
            self.print_to_log_file(f"clock: {self.budget_s:.0f} s of training from now; setup took "
                                   f"{self.setup_seconds:.1f} s; torch threads {torch.get_num_threads()}")

        def run_training(self):
            self.on_train_start()
            for _ in range(self.current_epoch, self.num_epochs):
                if self.time_up():
                    break
                self.on_epoch_start()
                self.on_train_epoch_start()
                train_outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    if self.time_up():
                        break
                    self.lr_scheduler.step()
                    train_outputs.append(self.train_step(next(self.dataloader_train)))
                    self.steps += 1
                    if self.steps % 10 == 0:
                        self.print_to_log_file(
                            f"step {self.steps}: loss {float(train_outputs[-1]['loss']):.4f}, lr "
                            f"{self.optimizer.param_groups[0]['lr']:.5f}, {self.elapsed() / 60:.2f} min")
                if train_outputs:
                    self.on_train_epoch_end(train_outputs)
                if len(train_outputs) < self.num_iterations_per_epoch:
                    self.stopped_mid_epoch = True  # out of time: no online validation for a partial epoch
                    break
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val_outputs = []
                    for _ in range(self.num_val_iterations_per_epoch):
                        if val_outputs and self.time_up():
                            break
                        val_outputs.append(self.validation_step(next(self.dataloader_val)))
                        self.val_steps += 1
                    self.on_validation_epoch_end(val_outputs)
                self.on_epoch_end()
                self.epochs_done += 1
            self.train_seconds = self.elapsed()
            self.on_train_end()

        def on_train_end(self):
            super().on_train_end()
            stats = {"steps": self.steps, "val_steps": self.val_steps, "epochs_completed": self.epochs_done,
                     "stopped_mid_epoch": self.stopped_mid_epoch,
                     "train_seconds": round(self.train_seconds, 2),
                     "setup_seconds": round(self.setup_seconds, 2), "budget_seconds": self.budget_s,
                     "batch_size": self.batch_size, "initial_lr": self.initial_lr,
                     "last_lr": self.optimizer.param_groups[0]["lr"],
                     "torch_threads": torch.get_num_threads(),
                     "torch_interop_threads": torch.get_num_interop_threads()}
            with open(os.path.join(self.output_folder, "clock.json"), "w") as f:
                json.dump(stats, f)

        def perform_actual_validation(self, save_probabilities: bool = False):
            if os.environ.get(FINAL_VAL_ENV) == "1":
                super().perform_actual_validation(save_probabilities)
            else:
                self.print_to_log_file("final validation skipped (fold all: it would only score the training "
                                       "cases; --final-validation runs it)")

    return nnUNetTrainerClock


def __getattr__(name: str):
    """nnU-Net's trainer search imports this module (from ``nnUNet_extTrainer``) and asks it for the class."""
    if name == TRAINER:
        cls = _clock_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the run ----------------------------------------------------------------------------------------------

def plan_summary(preprocessed: Path, configuration: str) -> dict:
    plans = json.loads((preprocessed / DATASET / f"{PLANS}.json").read_text())
    conf = plans["configurations"][configuration]
    arch = conf.get("architecture", {})
    kwargs = arch.get("arch_kwargs", {})
    return {"patch_size": conf["patch_size"], "batch_size": conf["batch_size"],
            "n_stages": kwargs.get("n_stages"), "spacing": conf["spacing"],
            "features_per_stage": kwargs.get("features_per_stage"),
            "network": arch.get("network_class_name"),
            "median_image_size": conf.get("median_image_size_in_voxels"),
            "normalization": conf.get("normalization_schemes")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, required=True, help="folder with images/ and masks/")
    ap.add_argument("--predict", type=Path, required=True, help="folder of images to segment")
    ap.add_argument("--out", type=Path, required=True, help="folder for the predicted masks")
    ap.add_argument("--minutes", type=float, required=True, help="training budget (wall clock)")
    ap.add_argument("--class-values", type=float, nargs="+", required=True, help="mask values, class order")
    ap.add_argument("--work", type=Path, default=None, help="nnU-Net's folders (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--final-validation", action="store_true",
                    help="let nnUNetv2_train predict and score its validation cases (fold all: training set)")
    args = ap.parse_args()
    if len(args.class_values) < 2:
        raise SystemExit("--class-values needs at least two values (background and one class)")

    temp = None
    if args.work is None:
        temp = tempfile.TemporaryDirectory(prefix="reference_nnunet_")
        args.work = Path(temp.name)
    work = args.work.resolve()
    raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    ext, test_dir, pred_dir = work / "ext_trainer", work / "imagesTs", work / "predTs"
    for d in (raw, pre, res, ext, test_dir, pred_dir):  # a fresh run: nnU-Net would reuse stale files
        shutil.rmtree(d, ignore_errors=True)
    ext.mkdir(parents=True)
    shutil.copyfile(Path(__file__).resolve(), ext / "reference_nnunet.py")

    t0 = time.monotonic()
    three_d, names, n_train = write_raw_dataset(args.train.resolve(), args.predict.resolve(), raw, test_dir,
                                                list(args.class_values))
    convert_s = time.monotonic() - t0
    configuration = "3d_fullres" if three_d else "2d"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
               nnUNet_extTrainer=str(ext), **{BUDGET_ENV: str(60.0 * args.minutes), SEED_ENV: str(args.seed),
                                              FINAL_VAL_ENV: "1" if args.final_validation else "0"})
    env.setdefault("nnUNet_n_proc_DA", str(min(12, cores)))  # nnU-Net's default rule, on the usable cores
    nproc = str(min(2, cores))

    preprocess_s = nnunet("nnUNetv2_plan_and_preprocess",
                          ["-d", str(DATASET_ID), "-c", configuration, "-np", nproc, "-npfp", nproc,
                           "--verify_dataset_integrity"], env)
    train_wall_s = nnunet("nnUNetv2_train", [str(DATASET_ID), configuration, "all", "-tr", TRAINER,
                                             "-device", "cpu"], env)
    model_dir = res / DATASET / f"{TRAINER}__{PLANS}__{configuration}"
    clock = json.loads((model_dir / "fold_all" / "clock.json").read_text())
    predict_s = nnunet("nnUNetv2_predict",
                       ["-i", str(test_dir), "-o", str(pred_dir), "-d", str(DATASET_ID), "-c", configuration,
                        "-f", "all", "-tr", TRAINER, "-chk", "checkpoint_final.pth", "-device", "cpu"], env)
    n = collect_predictions(pred_dir, args.out, names, three_d)

    summary = {"steps": clock["steps"], "train_minutes": round(clock["train_seconds"] / 60, 3),
               "configuration": configuration, "plan": plan_summary(pre, configuration),
               "epochs_completed": clock["epochs_completed"], "val_steps": clock["val_steps"],
               "stopped_mid_epoch": clock["stopped_mid_epoch"], "last_lr": clock["last_lr"],
               "convert_seconds": round(convert_s, 1), "preprocess_seconds": round(preprocess_s, 1),
               "train_setup_seconds": clock["setup_seconds"], "train_wall_seconds": round(train_wall_s, 1),
               "predict_seconds": round(predict_s, 1), "images": n, "training_cases": n_train,
               "torch_threads": clock["torch_threads"], "nnUNet_n_proc_DA": int(env["nnUNet_n_proc_DA"]),
               "final_validation": args.final_validation, "nnunetv2": _version("nnunetv2"),
               "torch": _version("torch")}
    print("REFERENCE " + json.dumps(summary), flush=True)
    if temp is not None:
        temp.cleanup()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--nnunet":
        run_nnunet_command(sys.argv[2], sys.argv[3:])
    else:
        main()
