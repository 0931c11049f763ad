//! Reverse-mode differentiation of a [`Graph`] into more graph: the backward pass of a training
//! step, written with standard ONNX operators so a stock ONNX Runtime (CPU or CUDA) runs it.
//!
//! [`backward`] walks the forward nodes in reverse, and for every node on a path from a
//! parameter to the loss applies the operator's rule, summing the contributions a tensor gets
//! from several consumers. Rules exist for the operators the VGG graphs use; any other
//! operator on such a path is an error naming it, never a silent zero. The formulations
//! follow what was measured on ONNX Runtime (see the reference notes in the README):
//!
//! - Conv: input gradient by `ConvTranspose(dY, W)` with the same pads, or on large planes by
//!   a Conv of dY over W with its channel axes swapped and its window reversed; weight gradient
//!   by one `Gemm` per kernel offset between `dY` as `[Cout, N*H*W]` and the matching shifted
//!   slice of the padded input as `[C, N*H*W]`, or `[N*H*W, C]` on narrow planes (the fastest
//!   form on CPU, 2-4x the swapped-axes Conv); bias gradient by `ReduceSum` over N, H, W. The
//!   forms that depend on size need the input's dimensions fixed in the graph (a training
//!   step's are); otherwise the first ones apply.
//! - Relu: `Where(Y > 0, dY, 0)`.
//! - MaxPool 2x2/2: each window is made the last axis (a 6-D view and one `Transpose`), its
//!   first maximum picked by `ArgMax` (PyTorch's choice on ties, on both providers), and dY
//!   routed there by one `ScatterElements` per plane into zeros (no MaxUnpool, which the CUDA
//!   provider lacks). A pool that also outputs `Indices` is differentiated by one scatter at
//!   those indices instead (ONNX Runtime's CPU pool takes a window's first maximum in
//!   row-major order; its CUDA pool scans a window column by column, so a tie between the two
//!   off-diagonal positions goes to the lower-left one there).
//! - LRN: the closed form, the channel-window sum written as a padded sum of shifted slices.
//! - Gemm, Flatten/Reshape, Mul, Add, Neg, ReduceSum, ReduceMean (all axes given), LogSoftmax,
//!   Softmax, Identity.
//!
//! A rule may read the node's inputs and outputs (they are all still alive in one graph, and
//! ONNX Runtime's planner frees them after their last use).

use std::collections::{HashMap, HashSet};

use super::ir::{Attr, Graph, Node, TensorData};

/// Why a graph could not be differentiated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutodiffError {
    #[error(
        "no gradient rule for {op} (node {node}), which lies between a parameter and the loss"
    )]
    NoRule { op: String, node: String },
    #[error("{op} (node {node}): {message}")]
    Unsupported {
        op: String,
        node: String,
        message: String,
    },
    #[error("`{0}` does not influence the loss: it gets no gradient")]
    Unused(String),
}

/// Appends the backward pass of `g`'s current nodes. `seeds` pairs each output to
/// differentiate with the tensor holding its incoming gradient (`1` for a scalar loss); the
/// result holds, for each tensor of `wrt`, the name of its gradient.
pub fn backward(
    g: &mut Graph,
    seeds: &[(&str, &str)],
    wrt: &[&str],
) -> Result<Vec<String>, AutodiffError> {
    let forward: Vec<Node> = g.nodes.clone();

    // Tensors that depend on a differentiated input...
    let mut depends: HashSet<String> = wrt.iter().map(|s| s.to_string()).collect();
    for n in &forward {
        if n.inputs.iter().any(|i| depends.contains(i)) {
            depends.extend(n.outputs.iter().cloned());
        }
    }
    // ...and that the seeds depend on.
    let mut reaches: HashSet<String> = seeds.iter().map(|(t, _)| t.to_string()).collect();
    for n in forward.iter().rev() {
        if n.outputs.iter().any(|o| reaches.contains(o)) {
            reaches.extend(n.inputs.iter().cloned());
        }
    }
    let live = |t: &str| depends.contains(t) && reaches.contains(t);

    let mut contributions: HashMap<String, Vec<String>> = HashMap::new();
    for (t, s) in seeds {
        contributions
            .entry(t.to_string())
            .or_default()
            .push(s.to_string());
    }
    for n in forward.iter().rev() {
        if !n.outputs.iter().any(|o| contributions.contains_key(o)) {
            continue;
        }
        let dys: Vec<Option<String>> = n
            .outputs
            .iter()
            .map(|o| contributions.remove(o).map(|parts| sum(g, parts)))
            .collect();
        let need: Vec<bool> = n.inputs.iter().map(|i| !i.is_empty() && live(i)).collect();
        if !need.iter().any(|&b| b) {
            continue;
        }
        let dy = dys[0]
            .clone()
            .ok_or_else(|| unsupported(n, "gradient of a secondary output"))?;
        let grads = rule(g, n, &dy, &need)?;
        for (i, grad) in grads.into_iter().enumerate() {
            if let Some(grad) = grad {
                if need[i] {
                    contributions
                        .entry(n.inputs[i].clone())
                        .or_default()
                        .push(grad);
                }
            }
        }
    }
    wrt.iter()
        .map(|w| {
            contributions
                .remove(*w)
                .map(|parts| sum(g, parts))
                .ok_or_else(|| AutodiffError::Unused(w.to_string()))
        })
        .collect()
}

fn sum(g: &mut Graph, parts: Vec<String>) -> String {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap();
    }
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    g.op("Sum", &refs, &[])
}

fn unsupported(n: &Node, message: &str) -> AutodiffError {
    AutodiffError::Unsupported {
        op: n.op.clone(),
        node: n.name.clone(),
        message: message.to_string(),
    }
}

type Grads = Vec<Option<String>>;

/// The gradients of `n`'s inputs (where `need`) given the gradient `dy` of its first output.
fn rule(g: &mut Graph, n: &Node, dy: &str, need: &[bool]) -> Result<Grads, AutodiffError> {
    let x = n.inputs[0].as_str();
    let y = n.outputs[0].as_str();
    let mut out: Grads = vec![None; n.inputs.len()];
    match n.op.as_str() {
        "Identity" => out[0] = Some(dy.to_string()),
        "Relu" => {
            let zero = g.scalar(0.0);
            let pos = g.op("Greater", &[y, &zero], &[]);
            out[0] = Some(g.op("Where", &[&pos, dy, &zero], &[]));
        }
        "Neg" => out[0] = Some(g.op("Neg", &[dy], &[])),
        "Add" => {
            for (i, o) in out.iter_mut().enumerate().take(2) {
                if need[i] {
                    *o = Some(dy.to_string());
                }
            }
        }
        "Mul" => {
            // The input that receives a gradient must have the output's shape (broadcasting
            // only on the other side), as in the loss and dropout masks.
            for i in 0..2 {
                if need[i] {
                    out[i] = Some(g.op("Mul", &[dy, &n.inputs[1 - i]], &[]));
                }
            }
        }
        "Flatten" | "Reshape" => {
            let shape = g.op("Shape", &[x], &[]);
            out[0] = Some(g.op("Reshape", &[dy, &shape], &[]));
        }
        "ReduceSum" | "ReduceMean" => out[0] = Some(reduce_rule(g, n, dy)?),
        "LogSoftmax" => {
            let axis = n.int("axis", -1);
            let axes = g.ints(&[axis]);
            let s = g.op("ReduceSum", &[dy, &axes], &[("keepdims", 1i64.into())]);
            let p = g.op("Exp", &[y], &[]);
            let ps = g.op("Mul", &[&p, &s], &[]);
            out[0] = Some(g.op("Sub", &[dy, &ps], &[]));
        }
        "Softmax" => {
            let axis = n.int("axis", -1);
            let axes = g.ints(&[axis]);
            let dyy = g.op("Mul", &[dy, y], &[]);
            let s = g.op("ReduceSum", &[&dyy, &axes], &[("keepdims", 1i64.into())]);
            let d = g.op("Sub", &[dy, &s], &[]);
            out[0] = Some(g.op("Mul", &[y, &d], &[]));
        }
        "Gemm" => out = gemm_rule(g, n, dy, need)?,
        "Conv" => out = conv_rule(g, n, dy, need)?,
        "MaxPool" => out[0] = Some(maxpool_rule(g, n, dy)?),
        "LRN" => out[0] = Some(lrn_rule(g, n, dy)?),
        _ => {
            return Err(AutodiffError::NoRule {
                op: n.op.clone(),
                node: n.name.clone(),
            })
        }
    }
    Ok(out)
}

fn reduce_rule(g: &mut Graph, n: &Node, dy: &str) -> Result<String, AutodiffError> {
    let x = n.inputs[0].as_str();
    let keep = n.int("keepdims", 1) == 1;
    let shape = g.op("Shape", &[x], &[]);
    // Axes: an input for ReduceSum (opset 13), an attribute for ReduceMean (opset 17).
    let axes: Option<String> = if n.op == "ReduceSum" {
        n.inputs.get(1).filter(|s| !s.is_empty()).cloned()
    } else {
        match n.ints("axes", &[]) {
            a if a.is_empty() => None,
            a => Some(g.ints(&a)),
        }
    };
    let unsq = match (&axes, keep) {
        (Some(a), false) => g.op("Unsqueeze", &[dy, a], &[]),
        _ => dy.to_string(),
    };
    let expanded = g.op("Expand", &[&unsq, &shape], &[]);
    if n.op == "ReduceSum" {
        return Ok(expanded);
    }
    // ReduceMean: divide by the number of reduced elements = size(x) / size(y).
    let y = n.outputs[0].as_str();
    let sx = g.op("Size", &[x], &[]);
    let sy = g.op("Size", &[y], &[]);
    let to = ("to", Attr::Int(super::ir::ElemType::F32.onnx_code()));
    let fx = g.op("Cast", &[&sx], std::slice::from_ref(&to));
    let fy = g.op("Cast", &[&sy], &[to]);
    let count = g.op("Div", &[&fx, &fy], &[]);
    Ok(g.op("Div", &[&expanded, &count], &[]))
}

fn gemm_rule(g: &mut Graph, n: &Node, dy: &str, need: &[bool]) -> Result<Grads, AutodiffError> {
    if n.int("transA", 0) != 0 || n.float("alpha", 1.0) != 1.0 || n.float("beta", 1.0) != 1.0 {
        return Err(unsupported(
            n,
            "only transA = 0, alpha = beta = 1 are differentiated",
        ));
    }
    let trans_b = n.int("transB", 0) == 1;
    let (a, b) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let mut out: Grads = vec![None; n.inputs.len()];
    if need[0] {
        // Y = A B^T: dA = dY B;  Y = A B: dA = dY B^T.
        let t = if trans_b { 0 } else { 1 };
        out[0] = Some(g.op("Gemm", &[dy, b], &[("transB", t.into())]));
    }
    if need[1] {
        out[1] = Some(if trans_b {
            g.op("Gemm", &[dy, a], &[("transA", 1i64.into())])
        } else {
            g.op("Gemm", &[a, dy], &[("transA", 1i64.into())])
        });
    }
    if need.get(2).copied().unwrap_or(false) {
        // The bias is [out] (broadcast over the batch).
        let axes = g.ints(&[0]);
        out[2] = Some(g.op("ReduceSum", &[dy, &axes], &[("keepdims", 0i64.into())]));
    }
    Ok(out)
}

/// An `end` for Slice that stops `from_end` elements before the end of an axis.
fn end_before(from_end: i64) -> i64 {
    if from_end == 0 {
        i64::MAX
    } else {
        -from_end
    }
}

fn conv_rule(g: &mut Graph, n: &Node, dy: &str, need: &[bool]) -> Result<Grads, AutodiffError> {
    let ks = n.ints("kernel_shape", &[]);
    let pads = n.ints("pads", &[0, 0, 0, 0]);
    if ks.len() != 2 {
        return Err(unsupported(n, "kernel_shape must be given and 2-D"));
    }
    if n.ints("strides", &[1, 1]) != [1, 1]
        || n.ints("dilations", &[1, 1]) != [1, 1]
        || n.int("group", 1) != 1
    {
        return Err(unsupported(
            n,
            "only stride 1, dilation 1, group 1 are differentiated",
        ));
    }
    if pads.len() != 4 || pads.iter().any(|&p| p < 0) || ks.iter().any(|&k| k < 1) {
        return Err(unsupported(
            n,
            "pads must be four values >= 0 and the kernel at least 1x1",
        ));
    }
    if n.attrs
        .iter()
        .any(|(k, v)| k == "auto_pad" && *v != Attr::Str("NOTSET".into()))
    {
        return Err(unsupported(n, "auto_pad is not differentiated: give pads"));
    }
    let (x, w) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let mut out: Grads = vec![None; n.inputs.len()];
    if need[0] {
        let y = n.outputs[0].as_str();
        out[0] = Some(conv_input_gradient(g, y, w, dy, &ks, &pads));
    }
    if need[1] {
        let perm = ("perm", Attr::Ints(vec![1, 0, 2, 3]));
        let rows = g.ints(&[0, -1]);
        // dY as [Cout, N*H*W].
        let dyt = g.op("Transpose", &[dy], std::slice::from_ref(&perm));
        let dym = g.op("Reshape", &[&dyt, &rows], &[]);
        // X padded once, as [C, N, H, W] (the Gemm's B transposed), or on narrow planes as
        // [N, H, W, C] (B as it is): there a shifted slice copies rows of W * C floats
        // instead of W, and the Gemm reads B without transposing it.
        let nhwc = g
            .static_dims(x)
            .is_some_and(|d| d.len() == 4 && d[3] <= CHANNELS_LAST_TAPS_UP_TO_WIDTH);
        let (layout, spatial) = if nhwc {
            (vec![0, 2, 3, 1], [1, 2])
        } else {
            (vec![1, 0, 2, 3], [2, 3])
        };
        let xt = g.op("Transpose", &[x], &[("perm", Attr::Ints(layout))]);
        let xp = if pads.iter().any(|&p| p != 0) {
            let mut p = vec![0; 8];
            for (k, &axis) in spatial.iter().enumerate() {
                p[axis] = pads[k];
                p[4 + axis] = pads[2 + k];
            }
            let p = g.ints(&p);
            g.op("Pad", &[&xt, &p], &[])
        } else {
            xt.clone()
        };
        let (kh, kw) = (ks[0], ks[1]);
        let axes = g.ints(&spatial.map(|a| a as i64));
        let mut taps = Vec::new();
        for i in 0..kh {
            for j in 0..kw {
                // The offset whose window is X itself (the centre of a same-padded kernel)
                // needs no slice.
                let unshifted = [i, j, kh - 1 - i, kw - 1 - j] == pads[..];
                let shifted = if unshifted {
                    xt.clone()
                } else {
                    let s = g.ints(&[i, j]);
                    let e = g.ints(&[end_before(kh - 1 - i), end_before(kw - 1 - j)]);
                    g.op("Slice", &[&xp, &s, &e, &axes], &[])
                };
                // [Cout, C] for this kernel offset.
                taps.push(if nhwc {
                    let m = g.op("Flatten", &[&shifted], &[("axis", 3i64.into())]);
                    g.op("Gemm", &[&dym, &m], &[])
                } else {
                    let m = g.op("Reshape", &[&shifted, &rows], &[]);
                    g.op("Gemm", &[&dym, &m], &[("transB", 1i64.into())])
                });
            }
        }
        let wshape = g.op("Shape", &[w], &[]);
        let dw = if taps.len() == 1 {
            taps.pop().unwrap()
        } else {
            let last = g.ints(&[2]);
            let parts: Vec<String> = taps
                .iter()
                .map(|t| g.op("Unsqueeze", &[t, &last], &[]))
                .collect();
            let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
            g.op("Concat", &refs, &[("axis", 2i64.into())])
        };
        out[1] = Some(g.op("Reshape", &[&dw, &wshape], &[]));
    }
    if need.get(2).copied().unwrap_or(false) {
        let axes = g.ints(&[0, 2, 3]);
        out[2] = Some(g.op("ReduceSum", &[dy, &axes], &[("keepdims", 0i64.into())]));
    }
    Ok(out)
}

/// Planes at most this wide get the convolution weight gradient's shifted slices of X in
/// [N, H, W, C] order rather than [C, N, H, W]. Measured per layer (nine slices and Gemms, one
/// thread, the same results bit for bit): 0.45-0.85x the time at widths 4-16, 1.0-1.1x at
/// 32-224, where rows of W floats already copy fast and the channels-last Transpose of a large
/// plane costs more than the plane-by-plane one.
const CHANNELS_LAST_TAPS_UP_TO_WIDTH: i64 = 16;

/// From this size of ConvTranspose's column buffer (C * kh * kw floats per position of dY,
/// per image) on, a convolution's input gradient is a Conv over the flipped kernel instead.
/// ConvTranspose multiplies the whole plane into that buffer and scatters it back (col2im),
/// which runs out of cache on large planes. Per layer shape alone, one thread: the Conv took
/// 0.87x at 2.25 MiB (D x 1/4's conv1_2) and 0.6-0.76x at 3.4-110 MiB (VGG-16's layers), but
/// 0.97-1.5x at 1.1 MiB and below (the small networks' other layers).
const FLIPPED_CONV_FROM_BYTES: i64 = 2 << 20;

/// dL/dX of a stride-1 convolution: `ConvTranspose(dY, W)` with the forward pads, or, for a
/// large enough input of known size, the same correlation as an ordinary Conv of dY with W's
/// channel axes swapped and its window reversed (pads k - 1 - p), which ONNX Runtime runs as
/// it runs a forward convolution, in tiles, without a column buffer of the whole plane.
fn conv_input_gradient(
    g: &mut Graph,
    y: &str,
    w: &str,
    dy: &str,
    ks: &[i64],
    pads: &[i64],
) -> String {
    // C from W ([Cout, C, kh, kw]), the plane from Y (dY's shape).
    let c = g.static_dims(w).and_then(|d| d.get(1).copied());
    let plane = g
        .static_dims(y)
        .filter(|d| d.len() == 4)
        .map(|d| d[2].saturating_mul(d[3]));
    let column_bytes = c.zip(plane).map(|(c, plane)| {
        c.saturating_mul(ks[0].saturating_mul(ks[1]).saturating_mul(4))
            .saturating_mul(plane)
    });
    let flipped_pads: Vec<i64> = pads
        .iter()
        .enumerate()
        .map(|(i, p)| ks[i % 2] - 1 - p)
        .collect();
    // (The rule has checked that pads are four values >= 0; one beyond k - 1 has no flip.)
    if column_bytes.is_none_or(|b| b < FLIPPED_CONV_FROM_BYTES)
        || flipped_pads.iter().any(|&p| p < 0)
    {
        return g.op(
            "ConvTranspose",
            &[dy, w],
            &[
                ("kernel_shape", ks.to_vec().into()),
                ("pads", pads.to_vec().into()),
            ],
        );
    }
    let swapped = g.op("Transpose", &[w], &[("perm", Attr::Ints(vec![1, 0, 2, 3]))]);
    let (starts, ends) = (g.ints(&[-1, -1]), g.ints(&[i64::MIN, i64::MIN]));
    let (axes, steps) = (g.ints(&[2, 3]), g.ints(&[-1, -1]));
    let flipped = g.op("Slice", &[&swapped, &starts, &ends, &axes, &steps], &[]);
    g.op(
        "Conv",
        &[dy, &flipped],
        &[
            ("kernel_shape", ks.to_vec().into()),
            ("pads", flipped_pads.into()),
        ],
    )
}

fn maxpool_rule(g: &mut Graph, n: &Node, dy: &str) -> Result<String, AutodiffError> {
    if n.ints("kernel_shape", &[]) != [2, 2]
        || n.ints("strides", &[1, 1]) != [2, 2]
        || n.ints("pads", &[0, 0, 0, 0]) != [0, 0, 0, 0]
        || n.int("ceil_mode", 0) != 0
        || n.int("storage_order", 0) != 0
    {
        return Err(unsupported(
            n,
            "only the 2x2 stride-2 pool without padding is differentiated",
        ));
    }
    let x = n.inputs[0].as_str();
    let y = n.outputs[0].as_str();
    if let Some(indices) = n.outputs.get(1) {
        // The pool's Indices (each window's first maximum, as a flat index into X) route dY
        // in one scatter into zeros shaped like X.
        let shape = g.op("Shape", &[x], &[]);
        let zeros = g.op("ConstantOfShape", &[&shape], &[]);
        let flat = g.ints(&[-1]);
        let (z, i, u) = (
            g.op("Reshape", &[&zeros, &flat], &[]),
            g.op("Reshape", &[indices, &flat], &[]),
            g.op("Reshape", &[dy, &flat], &[]),
        );
        let routed = g.op("ScatterElements", &[&z, &i, &u], &[("axis", 0i64.into())]);
        return Ok(g.op("Reshape", &[&routed, &shape], &[]));
    }
    // Each window as the last axis, [N, C, h, w, 4] in row-major order (dh * 2 + dw): X viewed
    // as [N, C, h, 2, w, 2] and its two middle axes swapped, so ArgMax runs over four
    // contiguous values (1.5x faster than SpaceToDepth and an ArgMax across channels).
    let sy = g.op("Shape", &[y], &[]);
    let (s0, s3, s4) = (g.ints(&[0]), g.ints(&[3]), g.ints(&[4]));
    let lead = g.op("Slice", &[&sy, &s0, &s3], &[]);
    let last = g.op("Slice", &[&sy, &s3, &s4], &[]);
    let two_1 = g.ints(&[2]);
    let four_1 = g.ints(&[4]);
    let shape6 = g.op(
        "Concat",
        &[&lead, &two_1, &last, &two_1],
        &[("axis", 0i64.into())],
    );
    let blocks = g.op("Reshape", &[x, &shape6], &[]);
    let swapped = g.op(
        "Transpose",
        &[&blocks],
        &[("perm", Attr::Ints(vec![0, 1, 2, 4, 3, 5]))],
    );
    let shape5 = g.op("Concat", &[&sy, &four_1], &[("axis", 0i64.into())]);
    let windows = g.op("Reshape", &[&swapped, &shape5], &[]);
    // The first maximum of each window (ArgMax's choice on ties, as PyTorch's), [N, C, h, w].
    let arg = g.op(
        "ArgMax",
        &[&windows],
        &[("axis", 4i64.into()), ("keepdims", 0i64.into())],
    );
    // Its position in its plane of X: 2i W + 2j + (arg / 2) W + arg % 2, computed as
    // 2i W + 2j + arg + (arg / 2) (W - 2).
    let scalar = |g: &mut Graph, v: i64| g.constant("k", &[], TensorData::I64(vec![v]));
    let (zero, one, two, three) = (scalar(g, 0), scalar(g, 1), scalar(g, 2), scalar(g, 3));
    let sx = g.op("Shape", &[x], &[]);
    let width = g.op("Gather", &[&sx, &three], &[]);
    let (h, w) = (
        g.op("Gather", &[&sy, &two], &[]),
        g.op("Gather", &[&sy, &three], &[]),
    );
    let two_w = g.op("Mul", &[&width, &two], &[]);
    let rows = g.op("Range", &[&zero, &h, &one], &[]);
    let rows = g.op("Mul", &[&rows, &two_w], &[]);
    let s1 = g.ints(&[1]);
    let rows = g.op("Unsqueeze", &[&rows, &s1], &[]);
    let cols = g.op("Range", &[&zero, &w, &one], &[]);
    let cols = g.op("Mul", &[&cols, &two], &[]);
    let corner = g.op("Add", &[&rows, &cols], &[]);
    let below = g.op("Div", &[&arg, &two], &[]);
    let row_skip = g.op("Sub", &[&width, &two], &[]);
    let skipped = g.op("Mul", &[&below, &row_skip], &[]);
    let offset = g.op("Add", &[&arg, &skipped], &[]);
    let position = g.op("Add", &[&offset, &corner], &[]);
    // One scatter per plane ([N * C, H * W]) into zeros. The zeros are made at run time from
    // one element of dY (times 0), not by ConstantOfShape: X's shape is static in a training
    // step, so ONNX Runtime would fold a ConstantOfShape into a constant as large as X (up to
    // 1 GiB each) and keep it in the session.
    let (starts, ends) = (g.ints(&[0, 0, 0, 0]), g.ints(&[1, 1, 1, 1]));
    let one_dy = g.op("Slice", &[dy, &starts, &ends], &[]);
    let nought = g.scalar(0.0);
    let zero_dy = g.op("Mul", &[&one_dy, &nought], &[]);
    let zeros = g.op("Expand", &[&zero_dy, &sx], &[]);
    let per_plane = [("axis", Attr::Int(2))];
    let (z, i, u) = (
        g.op("Flatten", &[&zeros], &per_plane),
        g.op("Flatten", &[&position], &per_plane),
        g.op("Flatten", &[dy], &per_plane),
    );
    let routed = g.op("ScatterElements", &[&z, &i, &u], &[("axis", 1i64.into())]);
    Ok(g.op("Reshape", &[&routed, &sx], &[]))
}

/// Sum over the channel window of LRN (`size` odd): the window is symmetric, so the same
/// operator serves the forward normaliser and the gradient's transposed sum.
fn channel_window_sum(g: &mut Graph, t: &str, size: i64) -> String {
    let half = (size - 1) / 2;
    let pads = g.ints(&[0, half, 0, 0, 0, half, 0, 0]);
    let padded = g.op("Pad", &[t, &pads], &[]);
    let axes = g.ints(&[1]);
    let mut parts = Vec::new();
    for o in 0..size {
        let s = g.ints(&[o]);
        let e = g.ints(&[end_before(size - 1 - o)]);
        parts.push(g.op("Slice", &[&padded, &s, &e, &axes], &[]));
    }
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    g.op("Sum", &refs, &[])
}

fn lrn_rule(g: &mut Graph, n: &Node, dy: &str) -> Result<String, AutodiffError> {
    let size = n.int("size", 0);
    if size <= 0 || size % 2 == 0 {
        return Err(unsupported(n, "LRN size must be odd"));
    }
    let alpha = n.float("alpha", 1e-4);
    let beta = n.float("beta", 0.75);
    let bias = n.float("bias", 1.0);
    let x = n.inputs[0].as_str();
    let y = n.outputs[0].as_str();
    // s = bias + alpha/size * window(x^2);  y = x s^-beta
    // dx = dy s^-beta - (2 alpha beta / size) x window(dy y / s)
    let x2 = g.op("Mul", &[x, x], &[]);
    let w = channel_window_sum(g, &x2, size);
    let a = g.scalar(alpha / size as f32);
    let b = g.scalar(bias);
    let aw = g.op("Mul", &[&w, &a], &[]);
    let s = g.op("Add", &[&aw, &b], &[]);
    let nb = g.scalar(-beta);
    let p = g.op("Pow", &[&s, &nb], &[]);
    let direct = g.op("Mul", &[dy, &p], &[]);
    let dyy = g.op("Mul", &[dy, y], &[]);
    let q = g.op("Div", &[&dyy, &s], &[]);
    let wq = channel_window_sum(g, &q, size);
    let c = g.scalar(2.0 * alpha * beta / size as f32);
    let xw = g.op("Mul", &[x, &wq], &[]);
    let cross = g.op("Mul", &[&xw, &c], &[]);
    Ok(g.op("Sub", &[&direct, &cross], &[]))
}
