#!/usr/bin/env python3
"""Peer benchmark: VGG training augmentation with torchvision's DataLoader.

Runs the same per-image pipeline as `vgg bench loader pipelines/vgg-jitter-256-512.toml` on a
class-folder tree of source files, so images/s can be compared on one machine:

    PIL open + convert("RGB")
    resize so the shortest side is S ~ U{scale_min..scale_max} (bilinear, antialiased)
    RandomCrop(crop), RandomHorizontalFlip(0.5)
    to float32 on the 0..255 scale (ToTensor() * 255)
    AlexNet PCA lighting, alpha ~ N(0, 0.1), eigenvalues scaled to 0..255
    subtract the mean RGB (123.68, 116.779, 103.939)
    collate into float32 NCHW batches

Optional: torch, torchvision and Pillow are needed only to run this script (see README.md here);
nothing in the Rust build or test suite uses it.

    python3 benches/peers/torchvision_loader.py --root ../shared/data/imagenet-sample-500/train --json
"""

import argparse
import json
import os
import platform
import sys
import time

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MEAN_RGB = (123.68, 116.779, 103.939)
# AlexNet (Krizhevsky et al., 2012) PCA of ImageNet RGB pixels, on the 0..1 scale.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
# Rows R, G, B; column j is the j-th eigenvector.
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
PCA_STD = 0.1


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="images/s of the VGG training augmentation with torchvision's DataLoader "
        "(peer of `vgg bench loader`)."
    )
    p.add_argument("--root", required=True, help="class-folder tree: ROOT/<class>/*.JPEG")
    p.add_argument(
        "--workers",
        type=int,
        default=available_cores(),
        help="DataLoader worker processes (default: all cores available, %(default)s here; "
        "0 = decode in the main process)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--batches",
        type=int,
        default=20,
        help="timed batches (rounded up to a whole number of rounds, one batch per worker), "
        "after a warm-up round of one batch per worker",
    )
    p.add_argument("--scale-min", type=int, default=256)
    p.add_argument("--scale-max", type=int, default=512)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--seed", type=int, default=0, help="seed for the file order and augmentation")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    if args.workers < 0:
        p.error("--workers must be >= 0")
    if args.batch_size < 1 or args.batches < 1:
        p.error("--batch-size and --batches must be >= 1")
    if not (1 <= args.scale_min <= args.scale_max):
        p.error("need 1 <= --scale-min <= --scale-max")
    if args.crop < 1:
        p.error("--crop must be >= 1")
    return args


def import_torch():
    """Imports the optional dependencies, or exits with a message saying how to get them."""
    missing = []
    mods = {}
    for name in ("torch", "torchvision", "PIL"):
        try:
            mods[name] = __import__(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    if missing:
        sys.stderr.write(
            "torchvision_loader.py: missing Python packages: "
            + ", ".join(missing)
            + "\nThis peer benchmark is optional. Install them (CPU wheels) with:\n"
            "  python3 -m pip install pillow\n"
            "  python3 -m pip install torch torchvision "
            "--index-url https://download.pytorch.org/whl/cpu\n"
            "(see benches/peers/README.md)\n"
        )
        sys.exit(2)
    return mods["torch"], mods["torchvision"], mods["PIL"]


def list_files(root):
    """Sorted (path, class index) pairs of ROOT/<class>/<image>; classes are sorted folder names."""
    if not os.path.isdir(root):
        sys.exit(f"torchvision_loader.py: --root {root}: not a directory")
    classes = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    files = []
    for label, cls in enumerate(classes):
        folder = os.path.join(root, cls)
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                files.append((os.path.join(folder, name), label))
    if not files:
        sys.exit(f"torchvision_loader.py: --root {root}: no <class>/*.JPEG files found")
    return classes, files


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Augment:
    """One image: the VGG multi-scale training augmentation, float32 CHW on the 0..255 scale.

    A module-level class holding only picklable state, so DataLoader workers also work with the
    "spawn" start method (macOS, Windows).
    """

    def __init__(self, scale_min, scale_max, crop):
        import torch

        self.scale_min = scale_min
        self.scale_max = scale_max
        self.crop = crop
        self.eigval = torch.tensor(PCA_EIGVAL, dtype=torch.float32) * 255.0
        self.eigvec = torch.tensor(PCA_EIGVEC, dtype=torch.float32)
        self.mean = torch.tensor(MEAN_RGB, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, path):
        import torch
        from PIL import Image
        from torchvision.transforms import InterpolationMode, RandomCrop
        from torchvision.transforms import functional as TF

        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        # S ~ U{min..max}; the DataLoader seeds torch's RNG in each worker.
        s = int(torch.randint(self.scale_min, self.scale_max + 1, (1,)))
        img = TF.resize(img, s, interpolation=InterpolationMode.BILINEAR, antialias=True)
        img = RandomCrop(self.crop, pad_if_needed=True)(img)
        if torch.rand(1).item() < 0.5:
            img = TF.hflip(img)
        # Exactly ToTensor() * 255, without the divide and multiply.
        x = TF.pil_to_tensor(img).to(torch.float32)
        alpha = torch.randn(3) * PCA_STD
        shift = self.eigvec @ (alpha * self.eigval)  # per-channel RGB offset, 0..255 scale
        x += shift.view(3, 1, 1)
        x -= self.mean
        return x


class Files:
    """Map-style dataset: item i is (augmented image, label) of file order[i]."""

    def __init__(self, files, order, augment):
        self.files = files
        self.order = order
        self.augment = augment

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        path, label = self.files[self.order[i]]
        return self.augment(path), label


def build(args, torch, batches):
    """The dataset for `batches` batches: shuffled passes over the file list, repeated as often
    as needed to fill every batch. Returns (dataset, number of distinct files)."""
    _, files = list_files(args.root)
    total = batches * args.batch_size
    g = torch.Generator().manual_seed(args.seed)
    order = []
    while len(order) < total:
        order.extend(torch.randperm(len(files), generator=g).tolist())
    order = order[:total]
    return Files(files, order, Augment(args.scale_min, args.scale_max, args.crop)), len(files)


def main(argv=None):
    args = parse_args(argv)
    torch, torchvision, PIL = import_torch()
    torch.manual_seed(args.seed)
    # Each DataLoader worker builds whole batches, so the workers' first batches all arrive at
    # about the same moment, and so does each later round. Timing from the first batch to an
    # arbitrary one would count work done before the clock started; timing whole rounds after a
    # warm-up round does not.
    rounds = max(args.workers, 1)
    warmup = rounds
    timed = -(-args.batches // rounds) * rounds
    dataset, n_files = build(args, torch, warmup + timed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=False,  # the dataset is already in a shuffled order
        num_workers=args.workers,
        drop_last=True,
        pin_memory=False,
        persistent_workers=False,
    )
    machine = {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "os": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pil": getattr(PIL, "__version__", "unknown"),
        "torch_threads": torch.get_num_threads(),
    }
    info = sys.stderr if args.json else sys.stdout
    print(
        f"machine: {machine['cpu']} ({machine['cores']} cores, {machine['os']}); "
        f"python {machine['python']}, torch {machine['torch']}, torchvision "
        f"{machine['torchvision']}, PIL {machine['pil']}",
        file=info,
    )
    print(
        f"{args.root}: {n_files} files; {args.workers} workers, batch {args.batch_size}, "
        f"{timed} timed batches after {warmup} warm-up (one a worker); S ~ U{{{args.scale_min}..{args.scale_max}}}, "
        f"crop {args.crop}",
        file=info,
    )

    it = iter(loader)
    t_start = time.perf_counter()
    expect = (args.batch_size, 3, args.crop, args.crop)
    for _ in range(warmup):  # worker start-up, first decodes, page cache
        x, _ = next(it)
        if tuple(x.shape) != expect or x.dtype != torch.float32:
            sys.exit(
                f"torchvision_loader.py: batch is {tuple(x.shape)} {x.dtype}, "
                f"expected {expect} float32"
            )
    warmup_s = time.perf_counter() - t_start
    t0 = time.perf_counter()
    seen = 0
    for x, _ in it:
        seen += x.shape[0]
    elapsed = time.perf_counter() - t0
    timed = seen // args.batch_size
    images_per_sec = seen / elapsed if elapsed > 0 else float("inf")
    per_core = images_per_sec / max(args.workers, 1)

    report = {
        "images_per_sec": images_per_sec,
        "images_per_sec_per_core": per_core,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "batches": timed,
        "images": seen,
        "seconds": elapsed,
        "warmup_batches": warmup,
        "warmup_seconds": warmup_s,
        "files": n_files,
        "scale_min": args.scale_min,
        "scale_max": args.scale_max,
        "crop": args.crop,
        "machine": machine,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{images_per_sec:.1f} images/s, {per_core:.1f} images/s per worker "
            f"({seen} images in {elapsed:.2f} s; warm-up {warmup_s:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
