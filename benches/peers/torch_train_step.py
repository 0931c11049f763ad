#!/usr/bin/env python3
"""Peer benchmark: one VGG training step with PyTorch on the CPU or a CUDA GPU.

The peer of `cargo bench --bench train_step` (and, with `--device cuda`, of
`vgg bench train PIPELINE --device cuda`): the same network (the paper's configuration at a
width multiplier, as `vgg`'s `[model]` table builds it), the same batch shape and the same work per
step, so ms/step can be compared on one machine:

    features: per block, conv3 (padding 1) + ReLU for each convolution, then a 2x2/2 max-pool
    classifier: Linear + ReLU + Dropout(0.5), Linear + ReLU + Dropout(0.5), Linear
    loss: mean softmax cross-entropy
    update: SGD, momentum 0.9, weight decay 5e-4 on weights only (vgg does not decay biases)

Random float32 NCHW images (~N(0, 50), like mean-subtracted pixels), random labels, Glorot-uniform
weights and zero biases. Per thread count, training steps alternate with an inference forward
(`model.eval()` under `torch.no_grad()`) on the same batch, as the Rust benchmark alternates its
step with its forward graph; 3 warm-up rounds, then --steps timed rounds, medians.

Optional: torch is needed only to run this script (see README.md here); nothing in the Rust build
or test suite uses it.

    python3 benches/peers/torch_train_step.py --threads 2,1 --json
    python3 benches/peers/torch_train_step.py --device cuda --config D --width 1 --input 224 \
        --classes 1000 --batch 128 --tf32 on --json       # VGG-16 on the GPU

On CUDA the batch, labels and model live on the GPU, every timing point synchronises the device,
cuDNN's autotuner is on (`torch.backends.cudnn.benchmark`, as ONNX Runtime's CUDA provider searches
for its convolution algorithms), `--threads` is ignored, and `--tf32 on|off` sets both of
PyTorch's TF32 switches (convolutions and matrix products; `default` leaves PyTorch's defaults:
on for cuDNN convolutions, off for matrix products).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

WARMUP = 3

# Paper Table 1, as in src/config/model.rs ("conv3-64" -> 64; every convolution here is 3x3).
TABLE = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [
        [64, 64],
        [128, 128],
        [256, 256, 256, 256],
        [512, 512, 512, 512],
        [512, 512, 512, 512],
    ],
}


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="ms per VGG training step with PyTorch on the CPU or a CUDA GPU "
        "(peer of `cargo bench --bench train_step` and `vgg bench train`)."
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--tf32",
        default="default",
        choices=["default", "on", "off"],
        help="CUDA only: TF32 for convolutions and matrix products",
    )
    p.add_argument("--config", default="A", help="a row of the paper's Table 1: A, B, D or E")
    p.add_argument("--width", type=float, default=0.125, help="multiplies every width")
    p.add_argument("--input", type=int, default=64, help="input side")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps after 3 warm-up steps")
    p.add_argument(
        "--threads", default="2,1", help="comma-separated torch.set_num_threads counts"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)
    if args.config.upper() not in TABLE:
        p.error(f"--config {args.config}: one of {', '.join(TABLE)} (C and A-LRN are not here)")
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error("--threads: comma-separated integers")
    if args.steps < 1 or args.batch < 1 or min(args.threads) < 1:
        p.error("--steps, --batch and every --threads count must be >= 1")
    if args.input % 32:
        p.error("--input must be a multiple of 32 (five 2x2 pools)")
    if args.device != "cpu" and args.device != "cuda" and not args.device.startswith("cuda:"):
        p.error(f"--device {args.device}: cpu, cuda or cuda:N")
    if args.device != "cpu":
        args.threads = args.threads[:1]
    return args


def network_spec(args):
    """The network as `VggConfig::from_table` builds it: widths scaled and rounded, at least 1."""

    def scale(n):
        return max(1, round(n * args.width))

    return {
        "name": args.config.upper() if args.width == 1 else f"{args.config.upper()}x{args.width:g}",
        "blocks": [[scale(c) for c in b] for b in TABLE[args.config.upper()]],
        "fc": scale(4096),
        "classes": args.classes,
        "input": args.input,
    }


def build(torch, spec):
    nn = torch.nn
    layers, c = [], 3
    for block in spec["blocks"]:
        for co in block:
            layers += [nn.Conv2d(c, co, 3, padding=1), nn.ReLU(inplace=True)]
            c = co
        layers.append(nn.MaxPool2d(2, 2))
    side = spec["input"] >> len(spec["blocks"])
    fc = spec["fc"]
    model = nn.Sequential(
        nn.Sequential(*layers),
        nn.Flatten(1),
        nn.Linear(c * side * side, fc),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(fc, fc),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(fc, spec["classes"]),
    )
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def measure(torch, spec, args, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = build(torch, spec).to(device)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": 5e-4}, {"params": biases, "weight_decay": 0.0}],
        lr=0.01,
        momentum=0.9,
    )
    n, s = args.batch, spec["input"]
    images = (torch.randn(n, 3, s, s) * 50.0).to(device)
    labels = torch.randint(0, spec["classes"], (n,)).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def now():
        # On the GPU, a timing point waits for the queued kernels.
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def forward_only():
        model.eval()
        with torch.no_grad():
            t = now()
            model(images)
            return now() - t

    def step():
        model.train()
        t0 = now()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        t1 = now()
        loss.backward()
        t2 = now()
        opt.step()
        t3 = now()
        return t3 - t0, t1 - t0, t2 - t1, t3 - t2, loss.item()

    rounds = []
    for i in range(WARMUP + args.steps):
        f = forward_only()
        st = step()
        if i >= WARMUP:
            rounds.append((f,) + st)
    med = lambda k: statistics.median(r[k] for r in rounds)  # noqa: E731
    fwd_only, total = med(0), med(1)
    return {
        "threads": threads,
        "images_per_sec": n / total,
        "ms_per_step": total * 1e3,
        "forward_ms": med(2) * 1e3,
        "backward_ms": med(3) * 1e3,
        "update_ms": med(4) * 1e3,
        "forward_only_ms": fwd_only * 1e3,
        "ratio_step_to_forward": total / fwd_only,
        "first_loss": rounds[0][5],
        "last_loss": rounds[-1][5],
    }


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        print(
            f"torch_train_step.py needs torch ({e}); see benches/peers/README.md", file=sys.stderr
        )
        return 2
    spec = network_spec(args)
    parameters = sum(p.numel() for p in build(torch, spec).parameters())
    gpu = None
    if args.device != "cpu":
        if not torch.cuda.is_available():
            print(
                f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device",
                file=sys.stderr,
            )
            return 2
        torch.backends.cudnn.benchmark = True
        if args.tf32 != "default":
            on = args.tf32 == "on"
            torch.backends.cudnn.allow_tf32 = on
            torch.backends.cuda.matmul.allow_tf32 = on
        index = torch.device(args.device).index or 0
        gpu = {
            "name": torch.cuda.get_device_name(index),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_conv": torch.backends.cudnn.allow_tf32,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": True,
        }
    machine = {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "os": f"{platform.system().lower()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": args.device,
        "gpu": gpu,
    }
    if not args.json:
        print("# training-step benchmark: PyTorch peer")
        print(f"machine: {machine['cpu']} ({machine['cores']} cores, {machine['os']})")
        print(f"python {machine['python']}, torch {machine['torch']}, mkldnn {machine['mkldnn']}")
        if gpu:
            print(
                f"device {args.device}: {gpu['name']}, CUDA {gpu['cuda']}, cuDNN {gpu['cudnn']}, "
                f"TF32 conv {gpu['tf32_conv']} matmul {gpu['tf32_matmul']}, cudnn.benchmark on"
            )
        print(
            f"network: {spec['name']} ({parameters / 1e6:.2f} M parameters), input "
            f"{spec['input']}, {spec['classes']} classes\nbatch {args.batch} float32 NCHW "
            f"(random), {args.steps} timed steps after {WARMUP} warm-up, SGD momentum 0.9, "
            "weight decay 5e-4 (weights)"
        )
        print(
            f"\n{'threads':>7} {'images/s':>9} {'ms/step':>9} {'fwd':>7} {'bwd':>7} "
            f"{'update':>7} {'fwd-only':>9} {'step/fwd':>9}"
        )
    rows = []
    for t in args.threads:
        r = measure(torch, spec, args, t)
        rows.append(r)
        if not args.json:
            print(
                f"{r['threads']:>7} {r['images_per_sec']:>9.1f} {r['ms_per_step']:>9.2f} "
                f"{r['forward_ms']:>7.2f} {r['backward_ms']:>7.2f} {r['update_ms']:>7.2f} "
                f"{r['forward_only_ms']:>9.2f} {r['ratio_step_to_forward']:>9.2f}   "
                f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}"
            )
    if not args.json:
        print(
            "\nms/step: zero_grad + forward + loss + backward + SGD step, wall time; fwd, bwd and\n"
            "update split it; fwd-only: model.eval() forward under no_grad on the same batch;\n"
            "step/fwd = ms/step / fwd-only. Medians of the timed steps."
        )
        return 0
    top = rows[0]
    report = dict(top)
    report.update(
        {
            "machine": machine,
            "config": spec,
            "parameters": parameters,
            "batch": args.batch,
            "steps": args.steps,
            "warmup_steps": WARMUP,
            "rows": rows,
        }
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
