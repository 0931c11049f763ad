//! Does every node of a graph have a kernel in ONNX Runtime's CUDA execution provider?
//!
//! A node without one is not an error on the GPU: ONNX Runtime silently places it on the CPU
//! and copies its tensors across the bus on every run, which is slow and easy to miss. The
//! graphs are written with operators both providers implement (see [`super`]); this module
//! keeps that true. It embeds the CUDA provider's kernel table (operator, opset range, allowed
//! element types per type constraint), extracted from ONNX Runtime's `docs/OperatorKernels.md`
//! by `scripts/cuda-kernel-table.py` (see the table's header for its exact source), infers the
//! element type of every tensor, and reports each node whose operator, opset or types no CUDA
//! kernel takes.
//!
//! The kernel for a node is one whose opset range contains the opset the model imports
//! ([`OPSET`]), a little stricter than ONNX Runtime, which matches the since-version of the
//! operator's schema (the two agree whenever kernel ranges follow schema versions, as they do).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::ir::{Attr, Graph, Node, TensorData, OPSET};

/// The CUDA kernel table of the pinned ONNX Runtime (see scripts/fetch-onnxruntime.sh).
const CUDA_KERNELS: &str = include_str!("cuda_kernels_1.31.1.tsv");

/// One registered kernel: an opset range and the allowed types of each type constraint it
/// checks (a constraint of the schema that the kernel does not list accepts any type).
#[derive(Debug, Clone, PartialEq)]
struct Kernel {
    since: i64,
    /// `None`: open-ended (`13+`).
    until: Option<i64>,
    constraints: Vec<(String, Vec<String>)>,
}

impl Kernel {
    fn covers(&self, opset: i64) -> bool {
        self.since <= opset && self.until.is_none_or(|u| opset <= u)
    }

    fn range(&self) -> String {
        match self.until {
            None => format!("{}+", self.since),
            Some(u) if u == self.since => u.to_string(),
            Some(u) => format!("[{}, {u}]", self.since),
        }
    }

    #[cfg(test)]
    fn allowed(&self, constraint: &str) -> Option<&[String]> {
        self.constraints
            .iter()
            .find(|(c, _)| c == constraint)
            .map(|(_, t)| t.as_slice())
    }
}

/// Kernels per operator, domain ai.onnx.
#[derive(Debug, Default)]
struct KernelTable {
    ops: HashMap<String, Vec<Kernel>>,
}

impl KernelTable {
    /// Parses the tab-separated table written by `scripts/cuda-kernel-table.py`.
    fn parse(text: &str) -> Result<Self, String> {
        let mut table = KernelTable::default();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("CUDA kernel table line {}: {what}: {line:?}", i + 1);
            let f: Vec<&str> = line.split('\t').collect();
            let [op, since, until, constraint, types] = f[..] else {
                return Err(bad("expected 5 tab-separated fields"));
            };
            let since: i64 = since.parse().map_err(|_| bad("bad `since`"))?;
            let until = match until {
                "*" => None,
                u => Some(u.parse::<i64>().map_err(|_| bad("bad `until`"))?),
            };
            let kernels = table.ops.entry(op.to_string()).or_default();
            // Consecutive lines of one (op, range) are one kernel.
            let same = kernels
                .last()
                .is_some_and(|k| k.since == since && k.until == until);
            if !same {
                kernels.push(Kernel {
                    since,
                    until,
                    constraints: Vec::new(),
                });
            }
            if constraint != "-" {
                let types = types.split(',').map(str::to_string).collect();
                let k = kernels.last_mut().expect("pushed above");
                k.constraints.push((constraint.to_string(), types));
            }
        }
        if table.ops.is_empty() {
            return Err("the CUDA kernel table is empty".into());
        }
        Ok(table)
    }

    fn kernels(&self, op: &str) -> Option<&[Kernel]> {
        self.ops.get(op).map(Vec::as_slice)
    }
}

fn cuda_kernels() -> &'static KernelTable {
    static TABLE: OnceLock<KernelTable> = OnceLock::new();
    TABLE.get_or_init(|| KernelTable::parse(CUDA_KERNELS).expect("embedded CUDA kernel table"))
}

/// A node input or output bound to a type constraint.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Input `i` (skipped when absent or empty: an optional input).
    In(usize),
    /// Inputs `i..` (variadic, or several optional inputs of one constraint).
    InsFrom(usize),
    /// Output `i` (skipped when absent).
    Out(usize),
    /// Outputs `i..`.
    OutsFrom(usize),
}

/// The element type of an output.
#[derive(Debug, Clone, Copy)]
enum OutType {
    /// That of input `i`.
    Input(usize),
    Fixed(&'static str),
    /// The `to` attribute (Cast).
    CastTo,
}

type Bindings = &'static [(&'static str, &'static [Slot])];

/// Per operator, from its ONNX schema: which inputs and outputs each type constraint binds
/// (inputs of a fixed type such as Reshape's `shape: tensor(int64)` are bound only where the
/// CUDA kernel lists them as a constraint of their own), and the element type of each output
/// (the last rule serves any further outputs). An operator a graph uses must be listed here:
/// [`uncovered`] reports any other, so a new operator cannot go unchecked.
static SCHEMAS: &[(&[&str], Bindings, &[OutType])] = {
    use OutType::{CastTo, Fixed, Input};
    use Slot::{In, InsFrom, Out, OutsFrom};
    const SAME: &[OutType] = &[Input(0)];
    const BOOL: &[OutType] = &[Fixed("bool")];
    const INT64: &[OutType] = &[Fixed("int64")];
    &[
        (
            &[
                "Abs",
                "Ceil",
                "Elu",
                "Erf",
                "Exp",
                "Floor",
                "HardSigmoid",
                "LeakyRelu",
                "Log",
                "LRN",
                "Neg",
                "Reciprocal",
                "Relu",
                "Selu",
                "Sigmoid",
                "Sign",
                "Sqrt",
                "Tanh",
                "AveragePool",
                "GlobalAveragePool",
                "GlobalMaxPool",
                "Softmax",
                "LogSoftmax",
                "Flatten",
                "Transpose",
                "SpaceToDepth",
                "DepthToSpace",
                "Expand",
                "Unsqueeze",
                "Squeeze",
                "ReduceL1",
                "ReduceL2",
                "ReduceLogSum",
                "ReduceLogSumExp",
                "ReduceMax",
                "ReduceMean",
                "ReduceMin",
                "ReduceProd",
                "ReduceSum",
                "ReduceSumSquare",
                "Trilu",
            ],
            &[("T", &[In(0), Out(0)])],
            SAME,
        ),
        // Identity-13 calls its constraint T, Identity-14 on V.
        (
            &["Identity"],
            &[("T", &[In(0), Out(0)]), ("V", &[In(0), Out(0)])],
            SAME,
        ),
        (
            &["Add", "Sub", "Mul", "Div", "Mod"],
            &[("T", &[In(0), In(1), Out(0)])],
            SAME,
        ),
        (&["Pow"], &[("T", &[In(0), Out(0)]), ("T1", &[In(1)])], SAME),
        (
            &["Sum", "Max", "Min", "Concat", "Clip", "Range"],
            &[("T", &[InsFrom(0), Out(0)])],
            SAME,
        ),
        (
            &[
                "Equal",
                "Greater",
                "Less",
                "GreaterOrEqual",
                "LessOrEqual",
                "And",
                "Or",
                "Xor",
            ],
            &[("T", &[In(0), In(1)]), ("T1", &[Out(0)])],
            BOOL,
        ),
        (&["Not"], &[("T", &[In(0), Out(0)])], BOOL),
        (
            &["IsNaN", "IsInf"],
            &[("T1", &[In(0)]), ("T2", &[Out(0)])],
            BOOL,
        ),
        (
            &["Where"],
            &[("B", &[In(0)]), ("T", &[In(1), In(2), Out(0)])],
            &[Input(1)],
        ),
        (&["Cast"], &[("T1", &[In(0)]), ("T2", &[Out(0)])], &[CastTo]),
        (
            &["Shape", "Size"],
            &[("T", &[In(0)]), ("T1", &[Out(0)])],
            INT64,
        ),
        (&["NonZero", "ArgMax", "ArgMin"], &[("T", &[In(0)])], INT64),
        (
            &["Conv", "ConvTranspose", "Gemm", "MatMul"],
            &[("T", &[In(0), In(1), In(2), Out(0)])],
            SAME,
        ),
        (
            &["MaxPool", "TopK"],
            &[("T", &[In(0), Out(0)]), ("I", &[Out(1)])],
            &[Input(0), Fixed("int64")],
        ),
        (
            &["Reshape"],
            &[("T", &[In(0), Out(0)]), ("shape", &[In(1)])],
            SAME,
        ),
        (
            &["Slice"],
            &[("T", &[In(0), Out(0)]), ("Tind", &[InsFrom(1)])],
            SAME,
        ),
        (
            &["ScatterElements"],
            &[("T", &[In(0), In(2), Out(0)]), ("Tind", &[In(1)])],
            SAME,
        ),
        // The graphs write ConstantOfShape without a `value` attribute: float zeros.
        (
            &["ConstantOfShape"],
            &[("T1", &[In(0)]), ("T2", &[Out(0)])],
            &[Fixed("float")],
        ),
        (
            &["Gather", "GatherElements"],
            &[("T", &[In(0), Out(0)]), ("Tind", &[In(1)])],
            SAME,
        ),
        (
            &["Pad"],
            &[("T", &[In(0), In(2), Out(0)]), ("Tind", &[In(3)])],
            SAME,
        ),
        (&["Split"], &[("T", &[In(0), OutsFrom(0)])], SAME),
        (
            &["Tile"],
            &[("T", &[In(0), Out(0)]), ("T1", &[In(1)])],
            SAME,
        ),
        (
            &["CumSum"],
            &[("T", &[In(0), Out(0)]), ("T2", &[In(1)])],
            SAME,
        ),
        (
            &["OneHot"],
            &[("T1", &[In(0)]), ("T2", &[In(1)]), ("T3", &[In(2), Out(0)])],
            &[Input(2)],
        ),
    ]
};

fn schema(op: &str) -> Option<(Bindings, &'static [OutType])> {
    SCHEMAS
        .iter()
        .find(|(ops, _, _)| ops.contains(&op))
        .map(|&(_, b, o)| (b, o))
}

/// The ONNX name of a `TensorProto.DataType` code.
fn type_name(code: i64) -> Option<&'static str> {
    Some(match code {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        17 => "float8e4m3fn",
        18 => "float8e4m3fnuz",
        19 => "float8e5m2",
        20 => "float8e5m2fnuz",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        _ => return None,
    })
}

/// The tensors a slot names on `node` (absent and empty optional ones left out), each with a
/// description such as `input 1`.
fn slot_tensors(node: &Node, slot: Slot) -> Vec<(String, &str)> {
    fn pick<'a>(names: &'a [String], from: usize, to: usize, what: &str) -> Vec<(String, &'a str)> {
        (from..to.min(names.len()))
            .filter(|&i| !names[i].is_empty())
            .map(|i| (format!("{what} {i}"), names[i].as_str()))
            .collect()
    }
    match slot {
        Slot::In(i) => pick(&node.inputs, i, i + 1, "input"),
        Slot::InsFrom(i) => pick(&node.inputs, i, usize::MAX, "input"),
        Slot::Out(i) => pick(&node.outputs, i, i + 1, "output"),
        Slot::OutsFrom(i) => pick(&node.outputs, i, usize::MAX, "output"),
    }
}

/// The nodes of `graph` that the CUDA execution provider of the pinned ONNX Runtime cannot
/// run, one line each (graph, node, operator and why), at the opset the graph is written in;
/// empty when every node has a CUDA kernel. Also listed: graph outputs whose declared element
/// type differs from the inferred one (the inference the check rests on would be wrong).
pub fn uncovered(graph: &Graph) -> Vec<String> {
    uncovered_at(graph, OPSET)
}

/// [`uncovered`] as if the model imported `opset`.
pub fn uncovered_at(graph: &Graph, opset: i64) -> Vec<String> {
    let table = cuda_kernels();
    let mut types: HashMap<&str, &'static str> = HashMap::new();
    let mut report = Vec::new();
    for v in &graph.inputs {
        match type_name(v.elem.onnx_code()) {
            Some(t) => types.insert(&v.name, t),
            None => {
                report.push(format!(
                    "{}: input `{}` has an unknown type",
                    graph.name, v.name
                ));
                continue;
            }
        };
    }
    for init in &graph.initializers {
        let t = match init.data {
            TensorData::F32(_) => "float",
            TensorData::I64(_) => "int64",
        };
        types.insert(&init.name, t);
    }
    for node in &graph.nodes {
        let at = format!("{}: node {} ({})", graph.name, node.name, node.op);
        let schema = schema(&node.op);
        // Output types first (input 0's type where the operator is unknown), so that the
        // check sees them (a Cast's `to`) and later nodes can be checked.
        let rules: &[OutType] = schema.map_or(&[OutType::Input(0)], |(_, o)| o);
        for (i, out) in node.outputs.iter().enumerate() {
            let t = match rules[i.min(rules.len() - 1)] {
                OutType::Input(j) => node
                    .inputs
                    .get(j)
                    .and_then(|n| types.get(n.as_str()))
                    .copied(),
                OutType::Fixed(t) => Some(t),
                OutType::CastTo => match node.attrs.iter().find(|(k, _)| k == "to") {
                    Some((_, Attr::Int(code))) => type_name(*code),
                    _ => None,
                },
            };
            match t {
                Some(t) => {
                    types.insert(out, t);
                }
                None => report.push(format!("{at}: cannot infer the type of output {i} `{out}`")),
            }
        }
        if let Err(why) = check_node(table, node, schema, &types, opset) {
            report.push(format!("{at}: {why}"));
        }
    }
    for v in &graph.outputs {
        let declared = type_name(v.elem.onnx_code());
        let inferred = types.get(v.name.as_str()).copied();
        if declared != inferred {
            report.push(format!(
                "{}: output `{}` is declared {} but inferred {}",
                graph.name,
                v.name,
                declared.unwrap_or("?"),
                inferred.unwrap_or("?")
            ));
        }
    }
    report
}

/// Whether some CUDA kernel takes `node` at `opset`; the reason when none does.
fn check_node(
    table: &KernelTable,
    node: &Node,
    schema: Option<(Bindings, &[OutType])>,
    types: &HashMap<&str, &'static str>,
    opset: i64,
) -> Result<(), String> {
    let Some(kernels) = table.kernels(&node.op) else {
        return Err(format!(
            "no CUDA kernel for {} at any opset (it would run on the CPU)",
            node.op
        ));
    };
    let ranges = || {
        let r: Vec<String> = kernels.iter().map(Kernel::range).collect();
        r.join(", ")
    };
    let candidates: Vec<&Kernel> = kernels.iter().filter(|k| k.covers(opset)).collect();
    if candidates.is_empty() {
        return Err(format!(
            "no CUDA kernel for {} at opset {opset} (CUDA registers {})",
            node.op,
            ranges()
        ));
    }
    let Some((bindings, _)) = schema else {
        return Err(format!(
            "{} is missing from SCHEMAS in src/net/graph/cuda_coverage.rs: add which inputs and \
             outputs each of its type constraints binds, and its output types",
            node.op
        ));
    };
    if node.op == "ConstantOfShape" && node.attrs.iter().any(|(k, _)| k == "value") {
        return Err(
            "ConstantOfShape with a `value` attribute: its type is not modelled here \
             (only the default, float zeros)"
                .into(),
        );
    }
    // The element types bound to each constraint, which must agree.
    let mut bound: Vec<(&str, Vec<(String, &'static str)>)> = Vec::new();
    for &(constraint, slots) in bindings {
        let mut tys = Vec::new();
        for &slot in slots {
            for (what, tensor) in slot_tensors(node, slot) {
                match types.get(tensor) {
                    Some(&t) => tys.push((what, t)),
                    // Reported above for an output.
                    None if what.starts_with("output") => {}
                    None => return Err(format!("the type of {what} `{tensor}` is unknown")),
                }
            }
        }
        if let Some((_, first)) = tys.first() {
            if let Some((what, t)) = tys.iter().find(|(_, t)| t != first) {
                return Err(format!(
                    "type constraint {constraint} binds both {first} and {t} ({what})"
                ));
            }
        }
        bound.push((constraint, tys));
    }
    let mut why = Vec::new();
    for k in &candidates {
        match kernel_takes(k, &node.op, bindings, &bound) {
            Ok(()) => return Ok(()),
            Err(e) => why.push(format!("kernel {}: {e}", k.range())),
        }
    }
    Err(format!(
        "no CUDA kernel at opset {opset} takes these types: {}",
        why.join("; ")
    ))
}

fn kernel_takes(
    k: &Kernel,
    op: &str,
    bindings: Bindings,
    bound: &[(&str, Vec<(String, &'static str)>)],
) -> Result<(), String> {
    for (constraint, allowed) in &k.constraints {
        if !bindings.iter().any(|(c, _)| c == constraint) {
            return Err(format!(
                "its type constraint {constraint} is not bound in SCHEMAS for {op}"
            ));
        }
        let tys = bound
            .iter()
            .find(|(c, _)| c == constraint)
            .map_or(&[][..], |(_, t)| t.as_slice());
        if let Some((what, t)) = tys.iter().find(|(_, t)| !allowed.iter().any(|a| a == t)) {
            return Err(format!(
                "{constraint} = {t} ({what}) is not among {}",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{VggConfig, PAPER_CONFIGS};
    use crate::net::graph::ir::{Dim, ElemType};
    use crate::net::graph::vgg::{
        dense_graph, forward_graph, gradient_graph, train_step_graph, update_graph, InputForm,
        StepOptions,
    };

    /// Every graph the project builds: one place to add a new builder.
    fn graphs_to_check() -> Vec<(String, Graph)> {
        let mut out = Vec::new();
        for name in PAPER_CONFIGS {
            let c = VggConfig::paper(name).unwrap();
            out.push((format!("{name} forward"), forward_graph(&c)));
            out.push((format!("{name} dense"), dense_graph(&c)));
            for input in [InputForm::F32Nchw, InputForm::U8Nhwc] {
                let opts = StepOptions {
                    batch: 4,
                    input,
                    ..Default::default()
                };
                let step = train_step_graph(&c, &opts).unwrap();
                out.push((format!("{name} train-step {input:?}"), step));
                for accumulate in [false, true] {
                    let g = gradient_graph(&c, &opts, accumulate).unwrap();
                    out.push((
                        format!("{name} gradient {input:?} accumulate={accumulate}"),
                        g,
                    ));
                }
            }
            let update = update_graph(&c, &StepOptions::default());
            out.push((format!("{name} update"), update));
        }
        out
    }

    #[test]
    fn every_node_of_every_graph_has_a_cuda_kernel() {
        let graphs = graphs_to_check();
        let mut problems = Vec::new();
        let mut nodes = 0;
        let mut ops = std::collections::BTreeSet::new();
        for (label, g) in &graphs {
            nodes += g.nodes.len();
            ops.extend(g.nodes.iter().map(|n| n.op.as_str()));
            problems.extend(uncovered(g).into_iter().map(|p| format!("[{label}] {p}")));
        }
        println!(
            "checked {} graphs, {nodes} nodes, {} operators: {ops:?}",
            graphs.len(),
            ops.len()
        );
        assert!(
            problems.is_empty(),
            "{} problem(s) in {} graphs ({nodes} nodes):\n{}",
            problems.len(),
            graphs.len(),
            problems.join("\n")
        );
        assert!(
            graphs.len() >= 6 * 4 && nodes > 1000,
            "too few graphs or nodes checked"
        );
    }

    fn conv_graph(elem: ElemType, cast_to: Option<i64>) -> Graph {
        let mut g = Graph::new("t");
        let dims = || vec![Dim::from(1), 1.into(), 3.into(), 3.into()];
        let mut x = g.input("x", elem, dims(), "");
        let mut w = g.input("w", elem, dims(), "");
        if let Some(to) = cast_to {
            x = g.op("Cast", &[&x], &[("to", to.into())]);
            w = g.op("Cast", &[&w], &[("to", to.into())]);
        }
        let y = g.op("Conv", &[&x, &w], &[("kernel_shape", vec![3, 3].into())]);
        let z = g.op("Cast", &[&y], &[("to", ElemType::F32.onnx_code().into())]);
        g.output(&z, "z", ElemType::F32, dims(), "");
        g
    }

    fn only_conv_reported(report: &[String], ty: &str) {
        assert_eq!(report.len(), 1, "{report:#?}");
        assert!(
            report[0].contains("(Conv)") && report[0].contains(&format!("T = {ty}")),
            "{report:#?}"
        );
    }

    #[test]
    fn a_conv_on_types_cuda_lacks_is_reported() {
        only_conv_reported(&uncovered(&conv_graph(ElemType::U8, None)), "uint8");
        only_conv_reported(&uncovered(&conv_graph(ElemType::F32, Some(6))), "int32");
        assert_eq!(
            uncovered(&conv_graph(ElemType::F32, None)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_bf16_conv_needs_opset_22() {
        let g = conv_graph(ElemType::F32, Some(16));
        for opset in [OPSET, 21] {
            only_conv_reported(&uncovered_at(&g, opset), "bfloat16");
        }
        assert_eq!(uncovered_at(&g, 22), Vec::<String>::new());
    }

    #[test]
    fn operators_without_a_cuda_kernel_are_reported() {
        for op in ["MaxUnpool", "SoftmaxCrossEntropyLoss"] {
            let mut g = Graph::new("t");
            let x = g.input("x", ElemType::F32, vec![4.into()], "");
            let i = g.input("i", ElemType::I64, vec![4.into()], "");
            let y = g.op(op, &[&x, &i], &[]);
            g.output(&y, "y", ElemType::F32, vec![4.into()], "");
            let report = uncovered(&g);
            assert_eq!(report.len(), 1, "{report:#?}");
            assert!(
                report[0].contains(&format!("no CUDA kernel for {op} at any opset")),
                "{report:#?}"
            );
        }
    }

    #[test]
    fn an_operator_missing_from_the_schema_table_is_reported() {
        // Einsum has a CUDA kernel, but SCHEMAS does not say what its constraints bind.
        let mut g = Graph::new("t");
        let x = g.input("x", ElemType::F32, vec![4.into()], "");
        let y = g.op("Einsum", &[&x], &[]);
        g.output(&y, "y", ElemType::F32, vec![4.into()], "");
        let report = uncovered(&g);
        assert_eq!(report.len(), 1, "{report:#?}");
        assert!(
            report[0].contains("Einsum is missing from SCHEMAS"),
            "{report:#?}"
        );
    }

    #[test]
    fn mismatched_or_wrongly_declared_types_are_reported() {
        let mut g = Graph::new("t");
        let x = g.input("x", ElemType::F32, vec![4.into()], "");
        let i = g.input("i", ElemType::I64, vec![4.into()], "");
        let y = g.op("Add", &[&x, &i], &[]);
        g.output(&y, "y", ElemType::F32, vec![4.into()], "");
        let s = g.op("Shape", &[&x], &[]);
        g.output(&s, "s", ElemType::F32, vec![1.into()], "");
        let report = uncovered(&g).join("\n");
        assert!(report.contains("binds both float and int64"), "{report}");
        assert!(
            report.contains("`s` is declared float but inferred int64"),
            "{report}"
        );
    }

    fn kernel_at<'a>(op: &str, opset: i64) -> &'a Kernel {
        let kernels = cuda_kernels().kernels(op).expect(op);
        let at: Vec<&Kernel> = kernels.iter().filter(|k| k.covers(opset)).collect();
        assert_eq!(at.len(), 1, "{op} at {opset}: {at:?}");
        at[0]
    }

    #[test]
    fn the_table_holds_known_facts() {
        let t = cuda_kernels();
        let has = |op: &str, opset: i64, c: &str, ty: &str| {
            kernel_at(op, opset)
                .allowed(c)
                .is_some_and(|a| a.iter().any(|x| x == ty))
        };
        assert_eq!(kernel_at("Conv", OPSET).range(), "[11, 21]");
        assert!(has("Conv", OPSET, "T", "float"));
        assert!(!has("Conv", OPSET, "T", "bfloat16"));
        assert!(has("Conv", 22, "T", "bfloat16"));
        assert!(has("Gemm", OPSET, "T", "bfloat16"));
        assert!(has("Gemm", OPSET, "T", "float"));
        assert!(has("Cast", OPSET, "T1", "uint8"));
        assert!(has("TopK", OPSET, "I", "int64"));
        assert!(has("Reshape", OPSET, "shape", "int64"));
        assert!(t.kernels("MaxUnpool").is_none());
        assert!(t.kernels("SoftmaxCrossEntropyLoss").is_none());
        assert!(t.ops.len() > 100, "{} operators", t.ops.len());
    }

    #[test]
    fn schema_table_matches_the_kernel_table() {
        let t = cuda_kernels();
        let mut seen = std::collections::HashSet::new();
        for (ops, bindings, outs) in SCHEMAS {
            assert!(!outs.is_empty());
            for op in *ops {
                assert!(seen.insert(*op), "{op} is listed twice in SCHEMAS");
                let kernels = t
                    .kernels(op)
                    .unwrap_or_else(|| panic!("{op}: no CUDA kernel"));
                // Every constraint a kernel of the op checks (from opset 7, the oldest the
                // graphs could be written in) is bound by the schema table.
                for k in kernels.iter().filter(|k| k.until.is_none_or(|u| u >= 7)) {
                    for (c, _) in &k.constraints {
                        assert!(
                            bindings.iter().any(|(b, _)| b == c),
                            "{op} kernel {}: constraint {c} is not bound in SCHEMAS",
                            k.range()
                        );
                    }
                }
            }
        }
    }
}
