//! The VGG graphs of one configuration: forward (training input size), dense evaluation (the
//! fully connected layers as convolutions, any input size), the training step (forward,
//! backward and SGD update in one graph), and the same step split in two for data-parallel
//! training and gradient accumulation (a gradient graph per micro-batch and an update graph
//! from the summed gradients), all over one parameter set.
//!
//! ## Parameters
//! The parameter layout (names, shapes, torchvision names) is the configuration's: see
//! [`crate::config::model`], which the graphs here take their inputs from.
//!
//! ## The training step
//! Inputs: every parameter, a momentum buffer per parameter (`NAME.momentum`), the batch
//! (`images`, float32 NCHW, or `pixels` uint8 NHWC plus `shift` [N, 3] from the loader's u8
//! output), `labels` (int64), `learning_rate` (scalar) and the two dropout masks
//! `dropout6`/`dropout7` ([N, fc], 0 or 1/(1-p): the trainer draws them from (seed, epoch,
//! step), so a step is a pure function of its inputs and a run is reproducible). Outputs:
//! `loss` (mean softmax cross-entropy of the batch), `top1_correct`, `top5_correct` (int64),
//! `NAME.next` and `NAME.momentum.next`.
//!
//! The update is the one the paper's Caffe used: `v' = momentum * v - lr * (g + wd * w)`,
//! `w' = w + v'`, written in few passes (see [`fused_sgd_update`]: the step's backward pass is
//! seeded with `-lr`, and the fully connected layers' Gemms add `momentum * v` themselves). With a fixed learning rate it equals PyTorch's form; at a learning-rate drop
//! Caffe's keeps the velocity already accumulated (it is not rescaled by the new rate). Biases
//! are not decayed by default: weight decay limits the size of the weights that shape the
//! function, while a bias only shifts a unit's operating point, and decaying it buys nothing
//! (Caffe's reference networks set `decay_mult: 0` on biases); [`StepOptions::decay_biases`]
//! turns it on.

use super::autodiff::{self, AutodiffError};
use super::ir::{Dim, ElemType, Graph, TensorData};
use crate::config::model::{parameters, ParamKind, ParamSpec, VggConfig, MOMENTUM};

/// The batch input of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputForm {
    /// `images`: float32 [N, 3, S, S], already mean-subtracted.
    F32Nchw,
    /// `pixels`: uint8 [N, S, S, 3] and `shift`: float32 [N, 3] (`pca_shift - mean`).
    U8Nhwc,
}

/// Settings baked into a training-step graph.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOptions {
    /// The step's fixed batch size.
    pub batch: usize,
    pub input: InputForm,
    pub momentum: f32,
    pub weight_decay: f32,
    pub decay_biases: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            batch: 256,
            input: InputForm::F32Nchw,
            momentum: 0.9,
            weight_decay: 5e-4,
            decay_biases: false,
        }
    }
}

/// The suffix of an updated tensor's output name.
pub const NEXT: &str = ".next";

fn declare_params(g: &mut Graph, params: &[ParamSpec]) {
    for p in params {
        g.input(
            &p.name,
            ElemType::F32,
            p.shape.iter().map(|&d| Dim::Fixed(d)).collect(),
            "",
        );
    }
}

/// How [`features`] orders a ReLU and the max-pool it feeds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pools {
    /// Conv, ReLU, then the pool: inference (ONNX Runtime fuses each Conv with its ReLU).
    Inference,
    /// For differentiation: where a ReLU feeds a pool directly, the pool comes first
    /// (`max(relu(x)) = relu(max(x))`, and the first maximum of a window is the same one
    /// unless the window is all negative, where the ReLU's gradient is zero either way), so
    /// that ReLU and its gradient work on a quarter of the values.
    Training,
}

/// The convolutional part: conv + ReLU (+ LRN) per layer, a 2x2 max-pool per block.
fn features(g: &mut Graph, config: &VggConfig, x: &str, pools: Pools) -> String {
    let mut x = x.to_string();
    let pool = [
        ("kernel_shape", vec![2i64, 2].into()),
        ("strides", vec![2i64, 2].into()),
    ];
    for (b, block) in config.blocks.iter().enumerate() {
        for (i, conv) in block.iter().enumerate() {
            let layer = format!("conv{}_{}", b + 1, i + 1);
            let k = conv.kernel as i64;
            let p = (k - 1) / 2;
            let y = g.op(
                "Conv",
                &[&x, &format!("{layer}.weight"), &format!("{layer}.bias")],
                &[
                    ("kernel_shape", vec![k, k].into()),
                    ("pads", vec![p, p, p, p].into()),
                ],
            );
            let lrn = config.lrn.filter(|_| b == 0 && i == 0);
            let last = i + 1 == block.len();
            x = if pools == Pools::Training && last && lrn.is_none() {
                let pooled = g.op("MaxPool", &[&y], &pool);
                g.op("Relu", &[&pooled], &[])
            } else {
                g.op("Relu", &[&y], &[])
            };
            if let Some(l) = lrn {
                // AlexNet's convention has no 1/size factor; ONNX divides alpha by size.
                x = g.op(
                    "LRN",
                    &[&x],
                    &[
                        ("size", (l.size as i64).into()),
                        ("alpha", (l.alpha * l.size as f32).into()),
                        ("beta", l.beta.into()),
                        ("bias", l.k.into()),
                    ],
                );
            }
            if last && (pools == Pools::Inference || lrn.is_some()) {
                x = g.op("MaxPool", &[&x], &pool);
            }
        }
    }
    x
}

/// fc6-fc8 on flattened features; `masks` multiplies the outputs of fc6 and fc7's ReLUs
/// (dropout). Returns the logits.
fn classifier(g: &mut Graph, features: &str, masks: Option<[&str; 2]>) -> String {
    let mut x = g.op("Flatten", &[features], &[("axis", 1i64.into())]);
    for (i, layer) in ["fc6", "fc7", "fc8"].into_iter().enumerate() {
        let y = g.op(
            "Gemm",
            &[&x, &format!("{layer}.weight"), &format!("{layer}.bias")],
            &[("transB", 1i64.into())],
        );
        x = if i < 2 {
            let r = g.op("Relu", &[&y], &[]);
            match masks {
                Some(m) => g.op("Mul", &[&r, m[i]], &[]),
                None => r,
            }
        } else {
            y
        };
    }
    x
}

/// Declares the image input of `form` and returns the network input (float32 NCHW).
fn image_input(g: &mut Graph, form: InputForm, batch: Dim, side: Dim) -> String {
    match form {
        InputForm::F32Nchw => g.input(
            "images",
            ElemType::F32,
            vec![batch, 3.into(), side.clone(), side],
            "float32 NCHW, mean-subtracted (pixel + shift - mean, 0-255 scale)",
        ),
        InputForm::U8Nhwc => {
            let pixels = g.input(
                "pixels",
                ElemType::U8,
                vec![batch.clone(), side.clone(), side, 3.into()],
                "uint8 NHWC crops",
            );
            let shift = g.input(
                "shift",
                ElemType::F32,
                vec![batch, 3.into()],
                "per-image RGB vector added to every pixel (PCA shift - mean)",
            );
            let f = g.op(
                "Cast",
                &[&pixels],
                &[("to", (ElemType::F32.onnx_code()).into())],
            );
            let nchw = g.op("Transpose", &[&f], &[("perm", vec![0, 3, 1, 2].into())]);
            let axes = g.ints(&[2, 3]);
            let s = g.op("Unsqueeze", &[&shift, &axes], &[]);
            g.op("Add", &[&nchw, &s], &[])
        }
    }
}

/// The forward graph: `images` [batch, 3, input, input] to `logits` and `probabilities`
/// [batch, classes]. Parameters are graph inputs.
pub fn forward_graph(config: &VggConfig) -> Graph {
    let mut g = Graph::new(&format!("vgg-{}-forward", config.name));
    g.doc = format!(
        "VGG configuration {} (Simonyan & Zisserman 2014), forward pass at {}x{}",
        config.name, config.input, config.input
    );
    let params = parameters(config);
    let x = image_input(
        &mut g,
        InputForm::F32Nchw,
        "batch".into(),
        (config.input as i64).into(),
    );
    declare_params(&mut g, &params);
    let f = features(&mut g, config, &x, Pools::Inference);
    let logits = classifier(&mut g, &f, None);
    let probs = g.op("Softmax", &[&logits], &[("axis", 1i64.into())]);
    let out = vec![Dim::from("batch"), (config.classes as i64).into()];
    g.output(
        &logits,
        "logits",
        ElemType::F32,
        out.clone(),
        "class scores",
    );
    g.output(
        &probs,
        "probabilities",
        ElemType::F32,
        out,
        "soft-max of the scores",
    );
    g
}

/// The dense-evaluation graph: the first FC layer as a `final_side` x `final_side` convolution
/// and the other two as 1x1 convolutions over an image of any size at least the training input;
/// the class score map is averaged spatially (`scores`), then soft-maxed (`probabilities`), as
/// in the paper's Section 3.2. Same parameters as [`forward_graph`].
pub fn dense_graph(config: &VggConfig) -> Graph {
    let mut g = Graph::new(&format!("vgg-{}-dense", config.name));
    g.doc = format!(
        "VGG configuration {}, dense evaluation: FC layers as convolutions, any input of at least {}x{}",
        config.name, config.input, config.input
    );
    let params = parameters(config);
    let x = g.input(
        "images",
        ElemType::F32,
        vec!["batch".into(), 3.into(), "height".into(), "width".into()],
        "float32 NCHW, mean-subtracted, both sides at least the training input",
    );
    declare_params(&mut g, &params);
    let mut h = features(&mut g, config, &x, Pools::Inference);
    let last_c = params[params.len() - 8].shape[0]; // the last conv's output channels
    let side = config.final_side() as i64;
    let fc = config.fc as i64;
    let layers = [
        ("fc6", [fc, last_c, side, side]),
        ("fc7", [fc, fc, 1, 1]),
        ("fc8", [config.classes as i64, fc, 1, 1]),
    ];
    for (i, (layer, shape)) in layers.into_iter().enumerate() {
        let s = g.ints(&shape);
        let w = g.op("Reshape", &[&format!("{layer}.weight"), &s], &[]);
        let y = g.op(
            "Conv",
            &[&h, &w, &format!("{layer}.bias")],
            &[("kernel_shape", vec![shape[2], shape[3]].into())],
        );
        h = if i < 2 { g.op("Relu", &[&y], &[]) } else { y };
    }
    let scores = g.op(
        "ReduceMean",
        &[&h],
        &[("axes", vec![2, 3].into()), ("keepdims", 0i64.into())],
    );
    let probs = g.op("Softmax", &[&scores], &[("axis", 1i64.into())]);
    let out = vec![Dim::from("batch"), (config.classes as i64).into()];
    g.output(
        &scores,
        "scores",
        ElemType::F32,
        out.clone(),
        "spatially averaged class scores",
    );
    g.output(
        &probs,
        "probabilities",
        ElemType::F32,
        out,
        "soft-max of the averaged scores",
    );
    g
}

/// The suffix of a gradient tensor (`NAME.grad`) in the gradient and update graphs.
pub const GRAD: &str = ".grad";

/// Declares a float32 input shaped like parameter `p`, named `p.name + suffix`.
fn declare_like(g: &mut Graph, params: &[ParamSpec], suffix: &str) {
    for p in params {
        g.input(
            &format!("{}{suffix}", p.name),
            ElemType::F32,
            p.shape.iter().map(|&d| Dim::Fixed(d)).collect(),
            "",
        );
    }
}

fn param_dims(p: &ParamSpec) -> Vec<Dim> {
    p.shape.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// The batch inputs, forward pass, loss and backward pass shared by the step and gradient
/// graphs. Returns (loss, top1, top5, one gradient per parameter).
fn forward_backward(
    g: &mut Graph,
    config: &VggConfig,
    opts: &StepOptions,
    scale: Option<&str>,
) -> Result<(String, String, String, Vec<String>), AutodiffError> {
    let n = opts.batch as i64;
    let params = parameters(config);
    let x = image_input(g, opts.input, n.into(), (config.input as i64).into());
    declare_params(g, &params);
    let labels = g.input("labels", ElemType::I64, vec![n.into()], "class indices");
    let fc = config.fc as i64;
    let m6 = g.input(
        "dropout6",
        ElemType::F32,
        vec![n.into(), fc.into()],
        "dropout mask after fc6: 0 or 1/(1-p)",
    );
    let m7 = g.input(
        "dropout7",
        ElemType::F32,
        vec![n.into(), fc.into()],
        "dropout mask after fc7: 0 or 1/(1-p)",
    );
    g.phase = "forward/".into();
    let f = features(g, config, &x, Pools::Training);
    let logits = classifier(g, &f, Some([&m6, &m7]));
    let (loss, top1, top5) = loss_and_hits(g, &logits, &labels, config.classes as i64, n);
    // The incoming gradient of the loss: 1, or a scale every gradient is then multiplied by
    // at no cost (the backward pass is linear in it).
    let seed = match scale {
        Some(s) => s.to_string(),
        None => g.scalar(1.0),
    };
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    g.phase = "backward/".into();
    let grads = autodiff::backward(g, &[(&loss, &seed)], &names)?;
    Ok((loss, top1, top5, grads))
}

/// The loss and hit-count outputs of the step and gradient graphs.
fn loss_outputs(g: &mut Graph, loss: &str, top1: &str, top5: &str) {
    g.output(
        loss,
        "loss",
        ElemType::F32,
        vec![],
        "mean softmax cross-entropy",
    );
    g.output(
        top1,
        "top1_correct",
        ElemType::I64,
        vec![],
        "images whose top class is right",
    );
    g.output(
        top5,
        "top5_correct",
        ElemType::I64,
        vec![],
        "images with the right class in the top 5",
    );
}

/// The training-step graph (see the module documentation for its inputs and outputs).
pub fn train_step_graph(config: &VggConfig, opts: &StepOptions) -> Result<Graph, AutodiffError> {
    let mut g = Graph::new(&format!("vgg-{}-train-step", config.name));
    g.doc = format!(
        "VGG configuration {}: one SGD step (forward, backward, update) on a batch of {}",
        config.name, opts.batch
    );
    let params = parameters(config);
    let lr = g.input("learning_rate", ElemType::F32, vec![], "");
    let minus_lr = g.op("Neg", &[&lr], &[]);
    // The backward pass, seeded with -lr, gives -lr * gradient directly.
    let (loss, top1, top5, steps) = forward_backward(&mut g, config, opts, Some(&minus_lr))?;
    declare_like(&mut g, &params, MOMENTUM);
    fused_sgd_update(&mut g, &params, &steps, &minus_lr, opts);
    loss_outputs(&mut g, &loss, &top1, &top5);
    Ok(g)
}

/// Caffe's SGD update of every parameter (outputs `NAME.next` and `NAME.momentum.next`) from
/// `steps[i] = -lr * gradient` (the step graph seeds its backward pass with `minus_lr` to get
/// them), in few passes over the parameters:
/// `v' = momentum * v + step + (-lr * wd) * w` and `w' = w + v'`. Where a gradient is the
/// output of a Gemm (the fully connected weights), `momentum * v` is that Gemm's C input
/// (beta = momentum), so the largest tensors are read and written two times fewer.
fn fused_sgd_update(
    g: &mut Graph,
    params: &[ParamSpec],
    steps: &[String],
    minus_lr: &str,
    opts: &StepOptions,
) {
    g.phase = "update/".into();
    let momentum = g.scalar(opts.momentum);
    let wd = g.scalar(opts.weight_decay);
    let decay = g.op("Mul", &[minus_lr, &wd], &[]);
    for (p, step) in params.iter().zip(steps) {
        let decays = opts.weight_decay != 0.0 && (p.kind == ParamKind::Weight || opts.decay_biases);
        let v = format!("{}{MOMENTUM}", p.name);
        let v_next_name = format!("{v}{NEXT}");
        // momentum * v goes into the gradient's Gemm where it is one, else into the last Add.
        let folded = fold_into_gemm(g, step, &v, opts.momentum);
        let decayed = if decays {
            let d = g.op("Mul", &[&p.name, &decay], &[]);
            g.op("Add", &[step, &d], &[])
        } else {
            step.clone()
        };
        let v_next = if folded {
            g.rename_unread(&decayed, &v_next_name)
        } else {
            let mv = g.op("Mul", &[&v, &momentum], &[]);
            g.op_named(&v_next_name, "Add", &[&mv, &decayed], &[])
        };
        let w_next = g.op_named(
            &format!("{}{NEXT}", p.name),
            "Add",
            &[&p.name, &v_next],
            &[],
        );
        g.output(&w_next, &w_next, ElemType::F32, param_dims(p), "");
        g.output(&v_next, &v_next, ElemType::F32, param_dims(p), "");
    }
}

/// If `tensor` is written by a Gemm without a C input (alpha = beta = 1) and read by nothing
/// yet, makes that Gemm add `beta * addend` (which must have the Gemm's output shape, as a
/// parameter's momentum has its gradient's) and returns true.
fn fold_into_gemm(g: &mut Graph, tensor: &str, addend: &str, beta: f32) -> bool {
    if g.uses(tensor) != 0 {
        return false;
    }
    let Some(node) = g.producer_mut(tensor) else {
        return false;
    };
    if node.op != "Gemm"
        || node.inputs.len() != 2
        || node.float("alpha", 1.0) != 1.0
        || node.float("beta", 1.0) != 1.0
    {
        return false;
    }
    node.inputs.push(addend.to_string());
    node.attrs.retain(|(k, _)| k != "beta");
    node.attrs.push(("beta".into(), beta.into()));
    true
}

/// The gradient graph of data-parallel training and gradient accumulation: the step graph's
/// batch inputs and parameters in, `loss`, `top1_correct`, `top5_correct` and one gradient
/// per parameter (`NAME.grad.next`, of this micro-batch's mean loss) out; no update.
///
/// With `accumulate`, it also takes the running sums `NAME.grad` and a scalar `keep` (0 or 1)
/// and writes `keep * NAME.grad + gradient`, so K micro-batches sum their gradients on the
/// device without another pass (`keep = 0` starts a new sum whatever the buffer holds, as
/// long as it is finite).
pub fn gradient_graph(
    config: &VggConfig,
    opts: &StepOptions,
    accumulate: bool,
) -> Result<Graph, AutodiffError> {
    let mut g = Graph::new(&format!("vgg-{}-gradient", config.name));
    g.doc = format!(
        "VGG configuration {}: forward and backward on a micro-batch of {}{}",
        config.name,
        opts.batch,
        if accumulate {
            ", gradients added to running sums"
        } else {
            ""
        }
    );
    let params = parameters(config);
    let (loss, top1, top5, grads) = forward_backward(&mut g, config, opts, None)?;
    g.phase = "accumulate/".into();
    let keep = accumulate.then(|| {
        declare_like(&mut g, &params, GRAD);
        g.input(
            "keep",
            ElemType::F32,
            vec![],
            "1 adds to the running sums, 0 starts new ones",
        )
    });
    for (p, grad) in params.iter().zip(&grads) {
        let out = format!("{}{GRAD}{NEXT}", p.name);
        let sum = match &keep {
            Some(keep) => {
                let kept = g.op("Mul", &[&format!("{}{GRAD}", p.name), keep], &[]);
                g.op_named(&out, "Add", &[&kept, grad], &[])
            }
            None => grad.clone(),
        };
        g.output(&sum, &out, ElemType::F32, param_dims(p), "");
    }
    loss_outputs(&mut g, &loss, &top1, &top5);
    Ok(g)
}

/// The update graph: parameters, momenta, summed gradients `NAME.grad`, `learning_rate` and
/// `grad_scale` (1 / the number of summed micro-batch gradients, so that `grad_scale *
/// NAME.grad` is the whole batch's mean gradient) in; `NAME.next` and `NAME.momentum.next`
/// out, by the same rule as the step graph.
pub fn update_graph(config: &VggConfig, opts: &StepOptions) -> Graph {
    let mut g = Graph::new(&format!("vgg-{}-update", config.name));
    g.doc = format!(
        "VGG configuration {}: the SGD update from summed gradients",
        config.name
    );
    let params = parameters(config);
    declare_params(&mut g, &params);
    declare_like(&mut g, &params, MOMENTUM);
    declare_like(&mut g, &params, GRAD);
    let lr = g.input("learning_rate", ElemType::F32, vec![], "");
    let scale = g.input(
        "grad_scale",
        ElemType::F32,
        vec![],
        "1 / the number of micro-batch gradients summed",
    );
    let minus_lr = g.op("Neg", &[&lr], &[]);
    let factor = g.op("Mul", &[&minus_lr, &scale], &[]);
    let steps: Vec<String> = params
        .iter()
        .map(|p| g.op("Mul", &[&format!("{}{GRAD}", p.name), &factor], &[]))
        .collect();
    fused_sgd_update(&mut g, &params, &steps, &minus_lr, opts);
    g
}

/// Mean softmax cross-entropy, with LogSoftmax and a one-hot built from `Equal` (both providers
/// run these; the CUDA provider lacks SoftmaxCrossEntropyLoss), and top-1/top-5 hit counts.
/// Returns (loss, top1, top5).
pub fn loss_and_hits(
    g: &mut Graph,
    logits: &str,
    labels: &str,
    classes: i64,
    batch: i64,
) -> (String, String, String) {
    let ls = g.op("LogSoftmax", &[logits], &[("axis", 1i64.into())]);
    let axes1 = g.ints(&[1]);
    let lab = g.op("Unsqueeze", &[labels, &axes1], &[]);
    let range = g.constant(
        "class_range",
        &[1, classes],
        TensorData::I64((0..classes).collect()),
    );
    let eq = g.op("Equal", &[&lab, &range], &[]);
    let onehot = g.op("Cast", &[&eq], &[("to", ElemType::F32.onnx_code().into())]);
    let picked = g.op("Mul", &[&ls, &onehot], &[]);
    let per_image = g.op(
        "ReduceSum",
        &[&picked, &axes1],
        &[("keepdims", 0i64.into())],
    );
    let total = g.op("ReduceSum", &[&per_image], &[("keepdims", 0i64.into())]);
    let scale = g.scalar(-1.0 / batch as f32);
    let loss = g.op("Mul", &[&total, &scale], &[]);

    let k = classes.min(5);
    let kk = g.ints(&[k]);
    let topk = g.op_n("TopK", &[logits, &kk], 2, &[("axis", 1i64.into())]);
    let hit = g.op("Equal", &[&topk[1], &lab], &[]);
    let hit = g.op("Cast", &[&hit], &[("to", ElemType::I64.onnx_code().into())]);
    let top5 = g.op("ReduceSum", &[&hit], &[("keepdims", 0i64.into())]);
    let (s, e) = (g.ints(&[0]), g.ints(&[1]));
    let first = g.op("Slice", &[&hit, &s, &e, &axes1], &[]);
    let top1 = g.op("ReduceSum", &[&first], &[("keepdims", 0i64.into())]);
    (loss, top1, top5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::torchvision_name;

    /// The convolution gradients' size-dependent forms are chosen in the step graphs: VGG-16 at
    /// 224 px takes the flipped-kernel Conv for every input gradient and channels-last taps on
    /// block 5's 14x14 planes, with the image as float32 or uint8; a small network at 64 px
    /// keeps ConvTranspose and takes channels-last taps on its planes of 16 and below.
    #[test]
    fn step_graphs_pick_the_gradient_forms_by_layer_size() {
        let count = |g: &Graph, op: &str, perm: Option<&[i64]>| {
            g.nodes
                .iter()
                .filter(|n| n.op == op && n.name.starts_with("backward/"))
                .filter(|n| perm.is_none_or(|p| n.ints("perm", &[]) == p))
                .count()
        };
        let channels_last = Some(&[0i64, 2, 3, 1][..]);
        let d = VggConfig::paper("D").unwrap();
        for input in [InputForm::F32Nchw, InputForm::U8Nhwc] {
            let opts = StepOptions {
                batch: 4,
                input,
                ..Default::default()
            };
            let g = train_step_graph(&d, &opts).unwrap();
            assert_eq!(count(&g, "ConvTranspose", None), 0, "{input:?}");
            assert_eq!(count(&g, "Conv", None), 12, "{input:?}: all but conv1_1");
            assert_eq!(count(&g, "Transpose", channels_last), 3, "{input:?}");
        }
        let table: toml::Table =
            toml::from_str("config = \"A\"\nwidth = 0.125\nclasses = 10\ninput = 64").unwrap();
        let small = VggConfig::from_table(&table).unwrap();
        let opts = StepOptions {
            batch: 32,
            ..Default::default()
        };
        let g = train_step_graph(&small, &opts).unwrap();
        assert_eq!(count(&g, "ConvTranspose", None), 7);
        // conv3_1 .. conv5_2 (16, 8 and 4 wide), not conv1_1 (64) or conv2_1 (32).
        assert_eq!(count(&g, "Transpose", channels_last), 6);
    }

    #[test]
    fn parameter_layout_matches_the_summary() {
        for name in crate::config::model::PAPER_CONFIGS {
            let c = VggConfig::paper(name).unwrap();
            let total: usize = parameters(&c).iter().map(|p| p.numel()).sum();
            assert_eq!(total as u64, c.summary().parameters, "{name}");
        }
    }

    #[test]
    fn torchvision_names_follow_make_layers() {
        let d = VggConfig::paper("D").unwrap();
        let p = parameters(&d);
        let tv: Vec<String> = p.iter().map(|s| torchvision_name(&d, s)).collect();
        // torchvision vgg16: convs at 0,2,5,7,10,12,14,17,19,21,24,26,28.
        let convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
        for (i, n) in convs.iter().enumerate() {
            assert_eq!(tv[2 * i], format!("features.{n}.weight"));
            assert_eq!(tv[2 * i + 1], format!("features.{n}.bias"));
        }
        assert_eq!(tv[26], "classifier.0.weight");
        assert_eq!(tv[28], "classifier.3.weight");
        assert_eq!(tv[31], "classifier.6.bias");
        assert_eq!(p[26].shape, vec![4096, 25088]);
        // vgg11: convs at 0,3,6,8,11,13,16,18.
        let a = VggConfig::paper("A").unwrap();
        let pa = parameters(&a);
        let got: Vec<String> = pa
            .iter()
            .step_by(2)
            .take(8)
            .map(|s| torchvision_name(&a, s))
            .collect();
        let want: Vec<String> = [0, 3, 6, 8, 11, 13, 16, 18]
            .iter()
            .map(|n| format!("features.{n}.weight"))
            .collect();
        assert_eq!(got, want);
    }
}
