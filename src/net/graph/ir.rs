//! A small graph builder over ONNX operators: the form in which the VGG graphs are written and
//! differentiated before they become a protobuf `ModelProto`.
//!
//! A [`Graph`] is the ONNX graph itself (inputs, initializers, nodes in topological order,
//! outputs), kept as plain Rust values so the differentiator can read and extend it; nothing here
//! knows about VGG. Every tensor is named by a string, exactly as in ONNX, and the builder hands
//! out fresh names so two nodes never write the same tensor. [`Graph::to_model`] lowers it to the
//! generated protobuf types with an explicit IR version and opset, which every ONNX Runtime from
//! 1.17 on accepts.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::onnx;

/// The ONNX opset every graph is written in.
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`] (ONNX Runtime 1.31 accepts up to 13).
pub const IR_VERSION: i64 = 8;

/// Element types the graphs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32,
    F64,
    U8,
    I64,
    Bool,
}

impl ElemType {
    /// The `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i64 {
        self.onnx() as i64
    }

    fn onnx(self) -> i32 {
        use onnx::tensor_proto::DataType;
        (match self {
            ElemType::F32 => DataType::Float,
            ElemType::F64 => DataType::Double,
            ElemType::U8 => DataType::Uint8,
            ElemType::I64 => DataType::Int64,
            ElemType::Bool => DataType::Bool,
        }) as i32
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A symbolic dimension such as `batch`.
    Named(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Dim::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Named(v.to_string())
    }
}

/// A graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<Dim>,
    pub doc: String,
}

/// Node attribute values.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
}

/// One operator application.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    /// An integer attribute, or `default` when absent.
    pub fn int(&self, key: &str, default: i64) -> i64 {
        match self.attr(key) {
            Some(Attr::Int(v)) => *v,
            _ => default,
        }
    }

    /// An integer-list attribute, or `default` when absent.
    pub fn ints(&self, key: &str, default: &[i64]) -> Vec<i64> {
        match self.attr(key) {
            Some(Attr::Ints(v)) => v.clone(),
            _ => default.to_vec(),
        }
    }

    /// A float attribute, or `default` when absent.
    pub fn float(&self, key: &str, default: f32) -> f32 {
        match self.attr(key) {
            Some(Attr::Float(v)) => *v,
            _ => default,
        }
    }

    fn attr(&self, key: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Constant tensor data.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A named constant (ONNX initializer).
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: TensorData,
}

/// An ONNX graph under construction.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub doc: String,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub initializers: Vec<Initializer>,
    pub nodes: Vec<Node>,
    /// Prefix of the names of nodes added from now on (`forward/`, `backward/`, `update/`), so a
    /// profile can split a step's time by phase.
    pub phase: String,
    used: HashSet<String>,
    counter: usize,
}

/// Builds an attribute list: `attrs![("axis", Attr::Int(1))]` reads worse than
/// `&[("axis", 1.into())]`, so plain conversions are provided.
impl From<i64> for Attr {
    fn from(v: i64) -> Self {
        Attr::Int(v)
    }
}

impl From<Vec<i64>> for Attr {
    fn from(v: Vec<i64>) -> Self {
        Attr::Ints(v)
    }
}

impl From<&[i64]> for Attr {
    fn from(v: &[i64]) -> Self {
        Attr::Ints(v.to_vec())
    }
}

impl From<f32> for Attr {
    fn from(v: f32) -> Self {
        Attr::Float(v)
    }
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// A fresh tensor name starting with `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("{hint}__{}", self.counter);
            if self.used.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Reserves an exact name (graph inputs, parameters, outputs); panics on a clash, which is a
    /// bug in the graph's construction.
    pub fn reserve(&mut self, name: &str) -> String {
        assert!(
            self.used.insert(name.to_string()),
            "tensor `{name}` defined twice"
        );
        name.to_string()
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: Vec<Dim>, doc: &str) -> String {
        let name = self.reserve(name);
        self.inputs.push(ValueInfo {
            name: name.clone(),
            elem,
            dims,
            doc: doc.to_string(),
        });
        name
    }

    /// Declares `tensor` a graph output under the name `name` (an Identity when they differ).
    pub fn output(&mut self, tensor: &str, name: &str, elem: ElemType, dims: Vec<Dim>, doc: &str) {
        if tensor != name {
            let name = self.reserve(name);
            self.push("Identity", &[tensor], vec![name], &[]);
        }
        self.outputs.push(ValueInfo {
            name: name.to_string(),
            elem,
            dims,
            doc: doc.to_string(),
        });
    }

    /// Adds a node with one output and returns that output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.push(op, inputs, vec![out.clone()], attrs);
        out
    }

    /// Adds a node with one output named `name` (reserved here).
    pub fn op_named(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        let out = self.reserve(name);
        self.push(op, inputs, vec![out.clone()], attrs);
        out
    }

    /// The node that writes `tensor`, if a node does (not for inputs and initializers).
    pub fn producer_mut(&mut self, tensor: &str) -> Option<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.outputs.iter().any(|o| o == tensor))
    }

    /// The node that writes `tensor`, if a node does.
    pub fn producer(&self, tensor: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.outputs.iter().any(|o| o == tensor))
    }

    /// The dimensions of `tensor` where they follow from fixed dimensions of graph inputs and
    /// initializers through the operators of a VGG forward pass (Conv, MaxPool, Relu, LRN,
    /// Cast, Identity, Neg, Transpose, Unsqueeze, broadcasting Add/Sub/Mul/Div), so a gradient
    /// rule can pick its form by size; `None` where any dimension on the way is symbolic, an
    /// operator is not one of those, or its attributes are out of the ordinary.
    pub fn static_dims(&self, tensor: &str) -> Option<Vec<i64>> {
        self.dims_memo(tensor, &mut HashMap::new())
    }

    fn dims_memo(
        &self,
        tensor: &str,
        memo: &mut HashMap<String, Option<Vec<i64>>>,
    ) -> Option<Vec<i64>> {
        if let Some(known) = memo.get(tensor) {
            return known.clone();
        }
        let dims = self.dims_of(tensor, memo);
        memo.insert(tensor.to_string(), dims.clone());
        dims
    }

    fn dims_of(
        &self,
        tensor: &str,
        memo: &mut HashMap<String, Option<Vec<i64>>>,
    ) -> Option<Vec<i64>> {
        if let Some(i) = self.initializers.iter().find(|i| i.name == tensor) {
            return Some(i.dims.clone());
        }
        if let Some(input) = self.inputs.iter().find(|i| i.name == tensor) {
            return input
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => Some(*v),
                    Dim::Named(_) => None,
                })
                .collect();
        }
        let n = self.producer(tensor)?;
        if n.outputs.first().map(|o| o.as_str()) != Some(tensor) {
            return None; // a second output (a pool's Indices): not needed
        }
        let mut input = |k: usize| self.dims_memo(n.inputs.get(k)?, memo);
        match n.op.as_str() {
            "Relu" | "LRN" | "Cast" | "Identity" | "Neg" => input(0),
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (input(0)?, input(1)?);
                let rank = a.len().max(b.len());
                let at = |d: &[i64], i: usize| (i + d.len() >= rank).then(|| d[i + d.len() - rank]);
                (0..rank)
                    .map(|i| match (at(&a, i).unwrap_or(1), at(&b, i).unwrap_or(1)) {
                        (x, y) if x == y || y == 1 => Some(x),
                        (1, y) => Some(y),
                        _ => None,
                    })
                    .collect()
            }
            "Transpose" => {
                let d = input(0)?;
                let reversed: Vec<i64> = (0..d.len() as i64).rev().collect();
                let perm = n.ints("perm", &reversed);
                let mut sorted = perm.clone();
                sorted.sort_unstable();
                if sorted != (0..d.len() as i64).collect::<Vec<_>>() {
                    return None;
                }
                Some(perm.iter().map(|&p| d[p as usize]).collect())
            }
            "Unsqueeze" => {
                let mut d = input(0)?;
                let axes = self.int_constant(n.inputs.get(1)?)?;
                let rank = (d.len() + axes.len()) as i64;
                let mut axes: Vec<i64> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + rank } else { a })
                    .collect();
                axes.sort_unstable();
                axes.dedup();
                if axes.len() as i64 + d.len() as i64 != rank {
                    return None;
                }
                for a in axes {
                    d.insert(usize::try_from(a).ok().filter(|&a| a <= d.len())?, 1);
                }
                Some(d)
            }
            "Conv" | "MaxPool" => {
                let x = input(0)?;
                let spatial = x.len().checked_sub(2)?;
                let (channels, kernel) = if n.op == "Conv" {
                    let w = input(1)?;
                    (*w.first()?, w.get(2..)?.to_vec())
                } else {
                    (*x.get(1)?, n.ints("kernel_shape", &[]))
                };
                let ones = vec![1; spatial];
                let (strides, dilations) = (n.ints("strides", &ones), n.ints("dilations", &ones));
                let pads = n.ints("pads", &vec![0; 2 * spatial]);
                let plain = n.int("ceil_mode", 0) == 0
                    && n.attr("auto_pad")
                        .is_none_or(|a| *a == Attr::Str("NOTSET".into()));
                if !plain
                    || [kernel.len(), strides.len(), dilations.len()] != [spatial; 3]
                    || pads.len() != 2 * spatial
                {
                    return None;
                }
                let mut out = vec![x[0], channels];
                for i in 0..spatial {
                    if kernel[i] < 1 || dilations[i] < 1 || strides[i] < 1 {
                        return None;
                    }
                    let span = (kernel[i] - 1).checked_mul(dilations[i])?.checked_add(1)?;
                    let padded = x[2 + i]
                        .checked_add(pads[i])?
                        .checked_add(pads[i + spatial])?;
                    if padded < span {
                        return None;
                    }
                    out.push((padded - span) / strides[i] + 1);
                }
                Some(out)
            }
            _ => None,
        }
    }

    /// The values of an int64 constant.
    fn int_constant(&self, name: &str) -> Option<&[i64]> {
        match &self.initializers.iter().find(|i| i.name == name)?.data {
            TensorData::I64(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    /// How many node inputs and graph outputs read `tensor`.
    pub fn uses(&self, tensor: &str) -> usize {
        let by_nodes: usize = self
            .nodes
            .iter()
            .map(|n| n.inputs.iter().filter(|i| *i == tensor).count())
            .sum();
        by_nodes + self.outputs.iter().filter(|o| o.name == tensor).count()
    }

    /// Gives the tensor a node writes, and nothing reads yet, the exact name `name`.
    pub fn rename_unread(&mut self, tensor: &str, name: &str) -> String {
        assert_eq!(self.uses(tensor), 0, "`{tensor}` is already read");
        let name = self.reserve(name);
        let node = self.producer_mut(tensor).expect("a node's output");
        for o in node.outputs.iter_mut().filter(|o| *o == tensor) {
            *o = name.clone();
        }
        name
    }

    /// Adds a node with `n` outputs.
    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n).map(|_| self.fresh(&op.to_lowercase())).collect();
        self.push(op, inputs, outs.clone(), attrs);
        outs
    }

    fn push(&mut self, op: &str, inputs: &[&str], outputs: Vec<String>, attrs: &[(&str, Attr)]) {
        let name = format!("{}{op}_{}", self.phase, self.nodes.len());
        self.nodes.push(Node {
            op: op.to_string(),
            name,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs,
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        });
    }

    /// A constant tensor.
    pub fn constant(&mut self, hint: &str, dims: &[i64], data: TensorData) -> String {
        let name = self.fresh(hint);
        self.initializer(&name, dims, data);
        name
    }

    /// An initializer with an exact name (already reserved or reserved here).
    pub fn initializer(&mut self, name: &str, dims: &[i64], data: TensorData) {
        self.used.insert(name.to_string());
        let n: i64 = dims.iter().product();
        let len = match &data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        };
        assert_eq!(n as usize, len, "initializer `{name}` has the wrong length");
        self.initializers.push(Initializer {
            name: name.to_string(),
            dims: dims.to_vec(),
            data,
        });
    }

    /// Turns the graph input `name` into a constant holding `data` (weights embedded in an
    /// exported model). Returns false when there is no such input.
    pub fn freeze(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> bool {
        let Some(i) = self.inputs.iter().position(|v| v.name == name) else {
            return false;
        };
        self.inputs.remove(i);
        self.initializer(name, dims, TensorData::F32(data));
        true
    }

    /// A 1-D int64 constant (shapes, axes, pads).
    pub fn ints(&mut self, values: &[i64]) -> String {
        self.constant(
            "ints",
            &[values.len() as i64],
            TensorData::I64(values.to_vec()),
        )
    }

    /// A float32 scalar constant.
    pub fn scalar(&mut self, value: f32) -> String {
        self.constant("scalar", &[], TensorData::F32(vec![value]))
    }

    /// Lowers the graph to a protobuf model.
    pub fn to_model(&self, producer_version: &str) -> onnx::ModelProto {
        onnx::ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![onnx::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("vgg".into()),
            producer_version: Some(producer_version.into()),
            doc_string: Some(self.doc.clone()),
            graph: Some(self.to_proto()),
            ..Default::default()
        }
    }

    /// The serialized model (what `Session::commit_from_memory` and `.onnx` files hold).
    pub fn encode(&self) -> Vec<u8> {
        self.to_model(env!("CARGO_PKG_VERSION")).encode_to_vec()
    }

    fn to_proto(&self) -> onnx::GraphProto {
        onnx::GraphProto {
            name: Some(self.name.clone()),
            node: self.nodes.iter().map(node_proto).collect(),
            initializer: self.initializers.iter().map(tensor_proto).collect(),
            input: self.inputs.iter().map(value_info).collect(),
            output: self.outputs.iter().map(value_info).collect(),
            ..Default::default()
        }
    }
}

fn node_proto(n: &Node) -> onnx::NodeProto {
    use onnx::attribute_proto::AttributeType;
    onnx::NodeProto {
        input: n.inputs.clone(),
        output: n.outputs.clone(),
        name: Some(n.name.clone()),
        op_type: Some(n.op.clone()),
        domain: Some(String::new()),
        attribute: n
            .attrs
            .iter()
            .map(|(k, v)| {
                let mut a = onnx::AttributeProto {
                    name: Some(k.clone()),
                    ..Default::default()
                };
                match v {
                    Attr::Int(i) => {
                        a.i = Some(*i);
                        a.r#type = Some(AttributeType::Int as i32);
                    }
                    Attr::Ints(is) => {
                        a.ints = is.clone();
                        a.r#type = Some(AttributeType::Ints as i32);
                    }
                    Attr::Float(f) => {
                        a.f = Some(*f);
                        a.r#type = Some(AttributeType::Float as i32);
                    }
                    Attr::Str(s) => {
                        a.s = Some(s.as_bytes().to_vec());
                        a.r#type = Some(AttributeType::String as i32);
                    }
                }
                a
            })
            .collect(),
        ..Default::default()
    }
}

fn tensor_proto(t: &Initializer) -> onnx::TensorProto {
    let mut p = onnx::TensorProto {
        name: Some(t.name.clone()),
        dims: t.dims.clone(),
        ..Default::default()
    };
    match &t.data {
        TensorData::F32(v) => {
            p.data_type = Some(ElemType::F32.onnx());
            p.raw_data = Some(v.iter().flat_map(|x| x.to_le_bytes()).collect());
        }
        TensorData::I64(v) => {
            p.data_type = Some(ElemType::I64.onnx());
            p.raw_data = Some(v.iter().flat_map(|x| x.to_le_bytes()).collect());
        }
    }
    p
}

fn value_info(v: &ValueInfo) -> onnx::ValueInfoProto {
    use onnx::tensor_shape_proto::{dimension::Value, Dimension};
    let dims = v
        .dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n),
                Dim::Named(s) => Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    onnx::ValueInfoProto {
        name: Some(v.name.clone()),
        doc_string: (!v.doc.is_empty()).then(|| v.doc.clone()),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: Some(v.elem.onnx()),
                    shape: Some(onnx::TensorShapeProto { dim: dims }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_dims_follow_a_vgg_forward_pass_and_stop_at_symbolic_ones() {
        let mut g = Graph::new("t");
        let px = g.input("pixels", ElemType::U8, dims(&[2, 32, 32, 3]), "");
        let shift = g.input("shift", ElemType::F32, dims(&[2, 3]), "");
        let to = [("to", Attr::Int(ElemType::F32.onnx_code()))];
        let f = g.op("Cast", &[&px], &to);
        let nchw = g.op("Transpose", &[&f], &[("perm", vec![0i64, 3, 1, 2].into())]);
        let axes = g.ints(&[2, -1]);
        let s = g.op("Unsqueeze", &[&shift, &axes], &[]);
        assert_eq!(g.static_dims(&s), Some(vec![2, 3, 1, 1]));
        let x = g.op("Add", &[&nchw, &s], &[]);
        assert_eq!(g.static_dims(&x), Some(vec![2, 3, 32, 32]));
        let w = g.input("w", ElemType::F32, dims(&[8, 3, 5, 5]), "");
        let conv = |g: &mut Graph, x: &str, pads: Vec<i64>| {
            g.op(
                "Conv",
                &[x, &w],
                &[
                    ("kernel_shape", vec![5i64, 5].into()),
                    ("pads", pads.into()),
                ],
            )
        };
        let same = conv(&mut g, &x, vec![2, 2, 2, 2]);
        let valid = conv(&mut g, &x, vec![0, 1, 0, 1]);
        assert_eq!(g.static_dims(&same), Some(vec![2, 8, 32, 32]));
        assert_eq!(g.static_dims(&valid), Some(vec![2, 8, 28, 30]));
        let r = g.op("Relu", &[&valid], &[]);
        let two = vec![2i64, 2];
        let pool = [
            ("kernel_shape", two.clone().into()),
            ("strides", two.into()),
        ];
        let p = g.op("MaxPool", &[&r], &pool);
        assert_eq!(g.static_dims(&p), Some(vec![2, 8, 14, 15]));
        let ceil = g.op(
            "MaxPool",
            &[&r],
            &[pool[0].clone(), pool[1].clone(), ("ceil_mode", 1i64.into())],
        );
        assert_eq!(g.static_dims(&ceil), None, "ceil_mode is not followed");
        let flat = g.op("Flatten", &[&p], &[]);
        assert_eq!(g.static_dims(&flat), None, "an operator it does not know");
        let b = g.input(
            "b",
            ElemType::F32,
            vec!["batch".into(), 3.into(), 32.into(), 32.into()],
            "",
        );
        let c = conv(&mut g, &b, vec![2, 2, 2, 2]);
        assert_eq!(g.static_dims(&c), None, "a symbolic batch");
        let wide = g.input("wide", ElemType::F32, dims(&[3, 1, 1]), "");
        let bad = g.input("bad", ElemType::F32, dims(&[2, 1]), "");
        let ok = g.op("Mul", &[&x, &wide], &[]);
        assert_eq!(g.static_dims(&ok), Some(vec![2, 3, 32, 32]));
        let clash = g.op("Mul", &[&x, &bad], &[]);
        assert_eq!(g.static_dims(&clash), None, "shapes that do not broadcast");
    }

    fn dims(d: &[i64]) -> Vec<Dim> {
        d.iter().map(|&v| Dim::Fixed(v)).collect()
    }

    #[test]
    fn lowering_keeps_names_types_and_attributes() {
        let mut g = Graph::new("t");
        let x = g.input("x", ElemType::F32, vec!["batch".into(), 3.into()], "images");
        let y = g.op("Relu", &[&x], &[]);
        let z = g.op("Flatten", &[&y], &[("axis", 1i64.into())]);
        g.output(&z, "z", ElemType::F32, vec!["batch".into(), 3.into()], "");
        let bytes = g.encode();
        let m = onnx::ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(m.ir_version, Some(IR_VERSION));
        assert_eq!(m.opset_import[0].version, Some(OPSET));
        let gp = m.graph.unwrap();
        assert_eq!(gp.node.len(), 3, "Relu, Flatten and the output Identity");
        assert_eq!(gp.node[1].op_type.as_deref(), Some("Flatten"));
        assert_eq!(gp.node[1].attribute[0].i, Some(1));
        assert_eq!(gp.output[0].name.as_deref(), Some("z"));
        assert_eq!(gp.input[0].doc_string.as_deref(), Some("images"));
    }

    #[test]
    fn fresh_names_never_clash_with_reserved_ones() {
        let mut g = Graph::new("t");
        g.reserve("relu__1");
        let a = g.fresh("relu");
        let b = g.fresh("relu");
        assert_ne!(a, "relu__1");
        assert_ne!(a, b);
    }
}
