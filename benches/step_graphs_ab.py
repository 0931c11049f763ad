#!/usr/bin/env python3
"""Two training-step graphs (`vgg model export PIPELINE --train-step`) timed against each other.

The sessions run alternately, step by step, with the order swapped every step, and the figure is
the median of the per-step time ratios (B / A) with its quartiles: on a shared machine whose speed
drifts by 10-30% within minutes, a ratio of neighbouring steps resolves changes that two separate
runs cannot. Both graphs get the same random inputs, so a graph change that should not change the
results can be checked with --compare.

Needs onnxruntime (the project's pinned version, 1.31.1) and numpy; nothing in the build or the
tests runs it.
"""
import argparse
import os
import time

import numpy as np
import onnxruntime as ort


def inputs(session, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = i.shape
        if "float" in i.type:
            feeds[i.name] = (
                (rng.standard_normal(shape) * 0.05).astype(np.float32)
                if shape
                else np.array(0.01, np.float32)
            )
        else:
            feeds[i.name] = rng.integers(0, 10, shape).astype(np.int64)
    return feeds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="baseline step graph (.onnx)")
    p.add_argument("b", help="changed step graph (.onnx)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each session")
    p.add_argument("--pairs", type=int, default=30, help="timed steps of each graph")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="print the largest output difference")
    o = p.parse_args()
    for path in (o.a, o.b):
        if not os.path.isfile(path):
            raise SystemExit(
                f"{path}: no such file (write one with `vgg model export PIPELINE --train-step "
                f"--out FILE`)"
            )
    ort.set_default_logger_severity(3)
    sessions = []
    for path in (o.a, o.b):
        so = ort.SessionOptions()
        so.intra_op_num_threads = o.threads
        so.inter_op_num_threads = 1
        try:
            sessions.append(ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
        except Exception as e:  # a damaged or foreign file: one line, not a traceback
            raise SystemExit(f"{path}: ONNX Runtime cannot load it: {e}")
    signature = [[(i.name, i.shape, i.type) for i in s.get_inputs()] for s in sessions]
    if signature[0] != signature[1]:
        raise SystemExit("the two graphs have different inputs: not the same network and batch")
    feeds = inputs(sessions[0], o.seed)
    outs = [s.run(None, feeds) for s in sessions]
    if o.compare:
        worst = max(
            float(np.abs(x - y).max() / (np.abs(x).max() + 1e-30)) for x, y in zip(*outs)
        )
        print(f"largest relative output difference: {worst:.3g}")
    ratios, ta, tb = [], [], []
    for step in range(o.pairs):
        t = {}
        for k in ((0, 1) if step % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            sessions[k].run(None, feeds)
            t[k] = time.perf_counter() - start
        ta.append(t[0])
        tb.append(t[1])
        ratios.append(t[1] / t[0])
    q = np.percentile(ratios, [25, 50, 75])
    print(
        f"{os.path.basename(o.b)} / {os.path.basename(o.a)}, {o.threads} thread(s): "
        f"median ratio {q[1]:.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}) over {o.pairs} pairs; "
        f"median step {np.median(tb) * 1e3:.1f} vs {np.median(ta) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
