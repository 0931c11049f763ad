//! Every gradient rule of the differentiator against central finite differences, through ONNX
//! Runtime: the analytic gradient comes from the backward graph, the numeric one from the
//! forward graph run at `x + eps` and `x - eps`, with the scalar `sum(y * r)` summed in float64
//! so the difference is not lost to float32 rounding.

use std::collections::HashMap;

use ort::session::Session;
use ort::value::{DynValue, Tensor};
use vgg::net::graph::autodiff;
use vgg::net::graph::ir::{Attr, Dim, ElemType, Graph};
use vgg::net::session::{self, SessionSettings};
use vgg::util::rng::{Rng, Stream};

/// A named float32 tensor.
#[derive(Clone)]
pub struct T {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

impl T {
    pub fn new(name: &str, shape: &[i64], data: Vec<f32>) -> T {
        assert_eq!(shape.iter().product::<i64>() as usize, data.len(), "{name}");
        T {
            name: name.into(),
            shape: shape.to_vec(),
            data,
        }
    }

    /// Uniform in [-1, 1), kept at least `gap` away from zero (away from ReLU's kink).
    pub fn random(name: &str, shape: &[i64], seed: u64, gap: f32) -> T {
        let n = shape.iter().product::<i64>() as usize;
        let mut rng = Rng::new(seed, Stream::Synthetic, 0, 0);
        let data = (0..n)
            .map(|_| {
                let v = rng.uniform(-1.0, 1.0) as f32;
                if v.abs() < gap {
                    gap.copysign(v)
                } else {
                    v
                }
            })
            .collect();
        T::new(name, shape, data)
    }

    pub fn value(&self) -> DynValue {
        let shape: Vec<usize> = self.shape.iter().map(|&d| d as usize).collect();
        Tensor::from_array((shape, self.data.clone()))
            .unwrap()
            .into_dyn()
    }
}

/// Runs `session` on float32 inputs (plus any extra values) and returns the float32 outputs.
pub fn run(
    session: &mut Session,
    inputs: &[T],
    extra: Vec<(String, DynValue)>,
) -> HashMap<String, Vec<f32>> {
    let mut values: Vec<(String, DynValue)> =
        inputs.iter().map(|t| (t.name.clone(), t.value())).collect();
    values.extend(extra);
    let outputs = session.run(values).unwrap();
    let mut out = HashMap::new();
    for (name, v) in outputs.iter() {
        if let Ok((_, data)) = v.try_extract_tensor::<f32>() {
            out.insert(name.to_string(), data.to_vec());
        } else if let Ok((_, data)) = v.try_extract_tensor::<f64>() {
            out.insert(name.to_string(), data.iter().map(|&x| x as f32).collect());
        } else if let Ok((_, data)) = v.try_extract_tensor::<i64>() {
            out.insert(name.to_string(), data.iter().map(|&x| x as f32).collect());
        }
    }
    out
}

fn dims(shape: &[i64]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// Checks the gradient of `sum(f(inputs) * r)` with respect to the inputs named in `wrt`, at
/// `samples` entries of each, against central differences with step `eps`; returns the
/// backward graph, for checks of the form a rule took.
pub fn check(
    what: &str,
    inputs: &[T],
    wrt: &[&str],
    out_shape: &[i64],
    f: impl Fn(&mut Graph, &[String]) -> String,
    eps: f32,
    samples: usize,
) -> Graph {
    let settings = SessionSettings {
        threads: 1,
        ..Default::default()
    };
    let r = T::random("r", out_shape, 99, 0.0);
    let declare = |g: &mut Graph| -> Vec<String> {
        let names = inputs
            .iter()
            .map(|t| g.input(&t.name, ElemType::F32, dims(&t.shape), ""))
            .collect();
        g.input("r", ElemType::F32, dims(out_shape), "");
        names
    };

    // sum(y * r) in float64.
    let mut fwd = Graph::new(&format!("{what}-forward"));
    let names = declare(&mut fwd);
    let y = f(&mut fwd, &names);
    let to = |t: ElemType| ("to", Attr::Int(t.onnx_code()));
    let y64 = fwd.op("Cast", &[&y], &[to(ElemType::F64)]);
    let r64 = fwd.op("Cast", &["r"], &[to(ElemType::F64)]);
    let prod = fwd.op("Mul", &[&y64, &r64], &[]);
    let total = fwd.op("ReduceSum", &[&prod], &[("keepdims", 0i64.into())]);
    fwd.output(&total, "objective", ElemType::F64, vec![], "");

    let mut bwd = Graph::new(&format!("{what}-backward"));
    let names = declare(&mut bwd);
    let y = f(&mut bwd, &names);
    let grads = autodiff::backward(&mut bwd, &[(&y, "r")], wrt).unwrap();
    for (w, gname) in wrt.iter().zip(&grads) {
        let shape = &inputs.iter().find(|t| t.name == *w).unwrap().shape;
        bwd.output(gname, &format!("grad.{w}"), ElemType::F32, dims(shape), "");
    }

    let mut fs = session::build(&fwd, &settings).unwrap();
    let mut bs = session::build(&bwd, &settings).unwrap();
    let mut all = inputs.to_vec();
    all.push(r.clone());
    let analytic = run(&mut bs, &all, vec![]);

    let objective = |s: &mut Session, v: &[T]| -> f64 {
        let mut values: Vec<(String, DynValue)> =
            v.iter().map(|t| (t.name.clone(), t.value())).collect();
        values.push(("r".into(), r.value()));
        let o = s.run(values).unwrap();
        o["objective"].try_extract_tensor::<f64>().unwrap().1[0]
    };

    for (wi, w) in wrt.iter().enumerate() {
        let idx = all.iter().position(|t| t.name == *w).unwrap();
        let grad = &analytic[&format!("grad.{w}")];
        assert_eq!(
            grad.len(),
            all[idx].data.len(),
            "{what}: gradient of {w} has the wrong size"
        );
        let scale = grad.iter().fold(0f32, |m, g| m.max(g.abs())).max(1e-3);
        let mut rng = Rng::new(7, Stream::Synthetic, wi as u64, 1);
        for _ in 0..samples {
            let e = rng.below(grad.len() as u64) as usize;
            let mut plus = all.clone();
            plus[idx].data[e] += eps;
            let mut minus = all.clone();
            minus[idx].data[e] -= eps;
            let numeric = (objective(&mut fs, &plus[..plus.len() - 1])
                - objective(&mut fs, &minus[..minus.len() - 1]))
                / (2.0 * eps as f64);
            let err = (numeric - grad[e] as f64).abs();
            assert!(
                err <= 2e-3 * scale as f64 + 2e-3 * numeric.abs(),
                "{what}: d/d{w}[{e}] analytic {} numeric {numeric} (largest gradient {scale})",
                grad[e]
            );
        }
    }
    bwd
}

fn ops(g: &Graph, op: &str) -> usize {
    g.nodes.iter().filter(|n| n.op == op).count()
}

#[test]
fn conv3x3_padded() {
    let inputs = [
        T::random("x", &[2, 3, 6, 5], 1, 0.0),
        T::random("w", &[4, 3, 3, 3], 2, 0.0),
        T::random("b", &[4], 3, 0.0),
    ];
    let bwd = check(
        "conv3x3",
        &inputs,
        &["x", "w", "b"],
        &[2, 4, 6, 5],
        |g, n| {
            g.op(
                "Conv",
                &[&n[0], &n[1], &n[2]],
                &[
                    ("kernel_shape", vec![3, 3].into()),
                    ("pads", vec![1, 1, 1, 1].into()),
                ],
            )
        },
        1e-2,
        8,
    );
    assert_eq!(ops(&bwd, "ConvTranspose"), 1, "small planes: ConvTranspose");
    assert_eq!(
        ops(&bwd, "Flatten"),
        9,
        "a narrow plane: channels-last taps"
    );
}

/// Planes large enough (ConvTranspose's column buffer C * kh * kw * H * W floats at 2 MiB or
/// more per image) that the input gradient is a Conv over the flipped, channel-swapped kernel:
/// same pads, no pads (flipped pads 2), and a 5x5 kernel.
#[test]
fn conv_input_gradient_on_large_planes_is_a_flipped_conv() {
    // (name, channels, [H, W], [kh, kw], pads [h_begin, w_begin, h_end, w_end])
    for (what, c, side, k, pads) in [
        ("same", 16, [64, 60], [3, 3], [1, 1, 1, 1]),
        ("valid", 16, [66, 64], [3, 3], [0, 0, 0, 0]),
        ("5x5", 8, [64, 64], [5, 5], [2, 2, 2, 2]),
        ("3x5, uneven pads", 16, [66, 64], [3, 5], [0, 2, 2, 1]),
    ] {
        let out = [0, 1].map(|a| side[a] + pads[a] + pads[a + 2] - k[a] + 1);
        let inputs = [
            T::random("x", &[2, c, side[0], side[1]], 11, 0.0),
            T::random("w", &[4, c, k[0], k[1]], 12, 0.0),
        ];
        let bwd = check(
            what,
            &inputs,
            &["x", "w"],
            &[2, 4, out[0], out[1]],
            |g, n| {
                g.op(
                    "Conv",
                    &[&n[0], &n[1]],
                    &[
                        ("kernel_shape", k.to_vec().into()),
                        ("pads", pads.to_vec().into()),
                    ],
                )
            },
            1e-2,
            12,
        );
        assert_eq!(ops(&bwd, "ConvTranspose"), 0, "{what}: no ConvTranspose");
        assert_eq!(
            ops(&bwd, "Conv"),
            2,
            "{what}: the forward Conv and the flipped one"
        );
        assert_eq!(
            ops(&bwd, "Flatten"),
            0,
            "{what}: a wide plane: [C, N, H, W] taps"
        );
    }
}

/// Uneven pads and a 3x5 kernel on small planes (ConvTranspose), with the weight gradient's
/// taps in both layouts: [C, N, H, W] on a plane 17 wide, channels-last on one 9 wide.
#[test]
fn conv_uneven_pads_in_both_tap_layouts() {
    for (what, width, flattens) in [("17 wide", 17, 0), ("9 wide", 9, 15)] {
        let inputs = [
            T::random("x", &[2, 3, 5, width], 13, 0.0),
            T::random("w", &[4, 3, 3, 5], 14, 0.0),
        ];
        let bwd = check(
            what,
            &inputs,
            &["x", "w"],
            &[2, 4, 5, width - 1],
            |g, n| {
                g.op(
                    "Conv",
                    &[&n[0], &n[1]],
                    &[
                        ("kernel_shape", vec![3, 5].into()),
                        ("pads", vec![0, 2, 2, 1].into()),
                    ],
                )
            },
            1e-2,
            10,
        );
        assert_eq!(ops(&bwd, "ConvTranspose"), 1, "{what}");
        assert_eq!(ops(&bwd, "Flatten"), flattens, "{what}");
    }
}

#[test]
fn conv1x1_and_conv5x5() {
    let inputs = [
        T::random("x", &[2, 3, 7, 7], 4, 0.0),
        T::random("w", &[2, 3, 1, 1], 5, 0.0),
    ];
    check(
        "conv1x1",
        &inputs,
        &["x", "w"],
        &[2, 2, 7, 7],
        |g, n| {
            g.op(
                "Conv",
                &[&n[0], &n[1]],
                &[("kernel_shape", vec![1, 1].into())],
            )
        },
        1e-2,
        6,
    );
    let inputs = [
        T::random("x", &[1, 2, 7, 6], 6, 0.0),
        T::random("w", &[3, 2, 5, 5], 7, 0.0),
        T::random("b", &[3], 8, 0.0),
    ];
    check(
        "conv5x5",
        &inputs,
        &["x", "w", "b"],
        &[1, 3, 7, 6],
        |g, n| {
            g.op(
                "Conv",
                &[&n[0], &n[1], &n[2]],
                &[
                    ("kernel_shape", vec![5, 5].into()),
                    ("pads", vec![2, 2, 2, 2].into()),
                ],
            )
        },
        1e-2,
        6,
    );
}

#[test]
fn relu() {
    let inputs = [T::random("x", &[3, 10], 9, 0.05)];
    check(
        "relu",
        &inputs,
        &["x"],
        &[3, 10],
        |g, n| g.op("Relu", &[&n[0]], &[]),
        1e-2,
        10,
    );
}

#[test]
fn maxpool_2x2() {
    // Distinct values at least 0.05 apart, so no window changes its maximum under +-eps.
    let n = 2 * 3 * 6 * 8;
    let mut values: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - 7.0).collect();
    Rng::new(3, Stream::Synthetic, 0, 0).shuffle(&mut values);
    let inputs = [T::new("x", &[2, 3, 6, 8], values)];
    let pool = |g: &mut Graph, n: &[String]| {
        g.op(
            "MaxPool",
            &[&n[0]],
            &[
                ("kernel_shape", vec![2, 2].into()),
                ("strides", vec![2, 2].into()),
            ],
        )
    };
    check("maxpool", &inputs, &["x"], &[2, 3, 3, 4], pool, 1e-2, 24);
    // With the pool's Indices output, the gradient is a scatter at those positions.
    let pool_with_indices = |g: &mut Graph, n: &[String]| {
        g.op_n(
            "MaxPool",
            &[&n[0]],
            2,
            &[
                ("kernel_shape", vec![2, 2].into()),
                ("strides", vec![2, 2].into()),
            ],
        )
        .swap_remove(0)
    };
    check(
        "maxpool with indices",
        &inputs,
        &["x"],
        &[2, 3, 3, 4],
        pool_with_indices,
        1e-2,
        24,
    );
}

#[test]
fn maxpool_ties_go_to_the_first_maximum() {
    // Windows whose maximum appears two to four times: the whole gradient goes to the first
    // in row-major order, as in PyTorch, not to all of them; with and without the pool's
    // Indices output. Two windows side by side, [1 1 | 0 2; 1 1 | 2 2]: the left one ties
    // four ways, the right one three ways (top-right first).
    for outputs in [1, 2] {
        let mut g = Graph::new("ties");
        let x = g.input("x", ElemType::F32, dims(&[1, 1, 2, 4]), "");
        let dy = g.input("dy", ElemType::F32, dims(&[1, 1, 1, 2]), "");
        let y = g
            .op_n(
                "MaxPool",
                &[&x],
                outputs,
                &[
                    ("kernel_shape", vec![2, 2].into()),
                    ("strides", vec![2, 2].into()),
                ],
            )
            .swap_remove(0);
        let grads = autodiff::backward(&mut g, &[(&y, &dy)], &["x"]).unwrap();
        g.output(&grads[0], "dx", ElemType::F32, dims(&[1, 1, 2, 4]), "");
        let mut s = session::build(&g, &SessionSettings::default()).unwrap();
        let out = run(
            &mut s,
            &[
                T::new("x", &[1, 1, 2, 4], vec![1., 1., 0., 2., 1., 1., 2., 2.]),
                T::new("dy", &[1, 1, 1, 2], vec![3.0, 5.0]),
            ],
            vec![],
        );
        assert_eq!(
            out["dx"],
            vec![3., 0., 0., 5., 0., 0., 0., 0.],
            "{outputs} output(s)"
        );
    }
}

#[test]
fn lrn_alexnet_style() {
    let inputs = [T::random("x", &[2, 7, 3, 3], 10, 0.0)];
    check(
        "lrn",
        &inputs,
        &["x"],
        &[2, 7, 3, 3],
        |g, n| {
            g.op(
                "LRN",
                &[&n[0]],
                &[
                    ("size", 5i64.into()),
                    ("alpha", 4.0f32.into()),
                    ("beta", 0.75f32.into()),
                    ("bias", 2.0f32.into()),
                ],
            )
        },
        1e-2,
        12,
    );
}

#[test]
fn gemm_both_layouts_and_flatten() {
    let inputs = [
        T::random("a", &[3, 2, 2, 2], 11, 0.0),
        T::random("w", &[5, 8], 12, 0.0),
        T::random("c", &[5], 13, 0.0),
    ];
    check(
        "gemm-transB",
        &inputs,
        &["a", "w", "c"],
        &[3, 5],
        |g, n| {
            let f = g.op("Flatten", &[&n[0]], &[("axis", 1i64.into())]);
            g.op("Gemm", &[&f, &n[1], &n[2]], &[("transB", 1i64.into())])
        },
        1e-2,
        8,
    );
    let inputs = [
        T::random("a", &[3, 4], 14, 0.0),
        T::random("w", &[4, 6], 15, 0.0),
    ];
    check(
        "gemm",
        &inputs,
        &["a", "w"],
        &[3, 6],
        |g, n| g.op("Gemm", &[&n[0], &n[1]], &[]),
        1e-2,
        8,
    );
}

#[test]
fn dropout_mask_multiply() {
    let inputs = [
        T::random("x", &[4, 6], 16, 0.0),
        T::new(
            "mask",
            &[4, 6],
            (0..24)
                .map(|i| if i % 3 == 0 { 0.0 } else { 2.0 })
                .collect(),
        ),
    ];
    check(
        "dropout",
        &inputs,
        &["x"],
        &[4, 6],
        |g, n| g.op("Mul", &[&n[0], &n[1]], &[]),
        1e-2,
        10,
    );
}

#[test]
fn softmax_log_softmax_and_spatial_mean() {
    let inputs = [T::random("z", &[3, 7], 17, 0.0)];
    check(
        "log-softmax",
        &inputs,
        &["z"],
        &[3, 7],
        |g, n| g.op("LogSoftmax", &[&n[0]], &[("axis", 1i64.into())]),
        1e-2,
        10,
    );
    check(
        "softmax",
        &inputs,
        &["z"],
        &[3, 7],
        |g, n| g.op("Softmax", &[&n[0]], &[("axis", 1i64.into())]),
        1e-2,
        10,
    );
    let inputs = [T::random("m", &[2, 3, 4, 5], 18, 0.0)];
    check(
        "reduce-mean",
        &inputs,
        &["m"],
        &[2, 3],
        |g, n| {
            g.op(
                "ReduceMean",
                &[&n[0]],
                &[("axes", vec![2, 3].into()), ("keepdims", 0i64.into())],
            )
        },
        1e-2,
        10,
    );
}

#[test]
fn softmax_cross_entropy_loss() {
    // The training step's loss: labels enter as a float input cast to int64, so the harness
    // can hand them over with the logits.
    let inputs = [
        T::random("z", &[4, 6], 19, 0.0),
        T::new("labels", &[4], vec![0.0, 5.0, 2.0, 2.0]),
    ];
    check(
        "cross-entropy",
        &inputs,
        &["z"],
        &[],
        |g, n| {
            let l = g.op(
                "Cast",
                &[&n[1]],
                &[("to", Attr::Int(ElemType::I64.onnx_code()))],
            );
            vgg::net::graph::vgg::loss_and_hits(g, &n[0], &l, 6, 4).0
        },
        1e-2,
        12,
    );
}

#[test]
fn an_operator_without_a_rule_is_an_error_naming_it() {
    let mut g = Graph::new("t");
    let x = g.input("x", ElemType::F32, dims(&[2]), "");
    let y = g.op("Tanh", &[&x], &[]);
    let one = g.scalar(1.0);
    let err = autodiff::backward(&mut g, &[(&y, &one)], &["x"]).unwrap_err();
    assert!(err.to_string().contains("Tanh"), "{err}");
}
