//! The torchvision weight mapping against PyTorch itself: `tests/fixtures/torchvision-tiny` holds
//! the `state_dict` of a tiny VGG-A built by torchvision's own `VGG` and `make_layers` (saved with
//! `safetensors.torch.save_file`), a fixed input and the model's eval-mode logits, all written by
//! `make_reference.py` there. The mapped weights must round-trip bit for bit, and the forward
//! graph run by ONNX Runtime on them must give PyTorch's logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vgg::config::model::VggConfig;
use vgg::net::checkpoint::{self, Checkpoint, NamedTensor};
use vgg::net::graph::vgg as graphs;
use vgg::net::session::{self, SessionSettings};

use crate::gradients::{run, T};

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision-tiny")
        .join(file)
}

/// `logits.json`: the reference logits and the `[model]` table of the network.
fn reference() -> serde_json::Value {
    let path = fixture("logits.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The network, from the `[model]` table `make_reference.py` records: A at width 1/32 (conv
/// widths 2, 4, 8, 16), fc 16, 10 classes, 64x64 input (a 2x2 final map: fc6's flatten order matters).
fn config(reference: &serde_json::Value) -> VggConfig {
    let table = toml::Value::try_from(&reference["model"]).unwrap();
    let c = VggConfig::from_table(table.as_table().expect("`model` is a table")).unwrap();
    let widths: Vec<Vec<u32>> = c
        .blocks
        .iter()
        .map(|b| b.iter().map(|conv| conv.channels).collect())
        .collect();
    assert_eq!(
        widths,
        vec![vec![2], vec![4], vec![8, 8], vec![16, 16], vec![16, 16]]
    );
    assert_eq!((c.fc, c.classes, c.final_side()), (16, 10, 2));
    c
}

fn weights() -> Vec<NamedTensor> {
    checkpoint::read_tensors(&fixture("weights.safetensors"))
        .unwrap()
        .0
}

fn bits(t: &NamedTensor) -> Vec<u32> {
    t.data.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn torchvision_state_dict_maps_and_round_trips_bit_exactly() {
    let reference = reference();
    let config = config(&reference);
    let file = weights();
    assert_eq!(file.len(), 22, "8 conv + 3 fc layers, weight and bias each");
    let params = checkpoint::from_torchvision(&config, &file).unwrap();

    // In the project's order and names, and (independently of `torchvision_name`) at
    // torchvision's VGG-11 module indices.
    let by_name: HashMap<&str, &NamedTensor> = file.iter().map(|t| (t.name.as_str(), t)).collect();
    let tv = [
        ("conv1_1", "features.0"),
        ("conv2_1", "features.3"),
        ("conv3_1", "features.6"),
        ("conv3_2", "features.8"),
        ("conv4_1", "features.11"),
        ("conv4_2", "features.13"),
        ("conv5_1", "features.16"),
        ("conv5_2", "features.18"),
        ("fc6", "classifier.0"),
        ("fc7", "classifier.3"),
        ("fc8", "classifier.6"),
    ];
    let expected: Vec<(String, String)> = tv
        .iter()
        .flat_map(|(ours, theirs)| {
            ["weight", "bias"].map(|k| (format!("{ours}.{k}"), format!("{theirs}.{k}")))
        })
        .collect();
    assert_eq!(params.len(), expected.len());
    for (p, (ours, theirs)) in params.iter().zip(&expected) {
        assert_eq!(&p.name, ours);
        let t = by_name[theirs.as_str()];
        assert_eq!(p.shape, t.shape, "{ours} <- {theirs}");
        assert_eq!(bits(p), bits(t), "{ours} <- {theirs}");
    }

    // Back to torchvision's names: the file's tensors, bit for bit.
    let ck = Checkpoint {
        config: config.clone(),
        params,
        momenta: None,
        state: None,
    };
    let mut back = checkpoint::to_torchvision(&ck);
    back.sort_by(|a, b| a.name.cmp(&b.name));
    let names = |v: &[NamedTensor]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&back), names(&file));
    for (a, b) in back.iter().zip(&file) {
        assert_eq!(a.shape, b.shape, "{}", a.name);
        assert_eq!(bits(a), bits(b), "{}", a.name);
    }

    // And through a file again.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tv.safetensors");
    checkpoint::write_tensors(&path, &back, HashMap::new()).unwrap();
    let (again, _) = checkpoint::read_tensors(&path).unwrap();
    assert_eq!(names(&again), names(&file));
    for (a, b) in again.iter().zip(&file) {
        assert_eq!(bits(a), bits(b), "{}", a.name);
    }
}

/// Runs the forward graph of `config` on the fixture input with `params`; returns the logits,
/// one row per image.
fn logits(config: &VggConfig, params: &[NamedTensor]) -> Vec<Vec<f32>> {
    let (input, _) = checkpoint::read_tensors(&fixture("input.safetensors")).unwrap();
    let images = input
        .iter()
        .find(|t| t.name == "images")
        .expect("input.safetensors holds `images`");
    let s = config.input as usize;
    assert_eq!(images.shape, vec![2, 3, s, s]);
    let to_t = |t: &NamedTensor| {
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        T::new(&t.name, &shape, t.data.clone())
    };
    let mut inputs: Vec<T> = params.iter().map(to_t).collect();
    inputs.push(to_t(images));
    let g = graphs::forward_graph(config);
    let settings = SessionSettings {
        threads: 1,
        ..Default::default()
    };
    let mut session = session::build(&g, &settings).unwrap();
    let out = run(&mut session, &inputs, vec![]);
    out["logits"]
        .chunks(config.classes as usize)
        .map(|r| r.to_vec())
        .collect()
}

/// The largest difference from the reference, as a fraction of the reference's largest
/// magnitude in the same image.
fn relative_error(got: &[Vec<f32>], want: &[Vec<f64>]) -> f64 {
    assert_eq!(got.len(), want.len(), "images");
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            assert_eq!(g.len(), w.len(), "classes");
            let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
            let diff = g
                .iter()
                .zip(w)
                .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
            diff / scale
        })
        .fold(0.0, f64::max)
}

#[test]
fn forward_graph_on_torchvision_weights_gives_pytorchs_logits() {
    let reference = reference();
    let config = config(&reference);
    let params = checkpoint::from_torchvision(&config, &weights()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["logits"].clone()).unwrap();
    let got = logits(&config, &params);
    let err = relative_error(&got, &want);
    assert!(
        err <= 1e-4,
        "ONNX Runtime's logits differ from PyTorch's by {err:.3e} of their scale\n got: {got:?}\nwant: {want:?}"
    );

    // The check has power: two same-shaped biases swapped (a mapping off by one layer) is
    // far outside the tolerance.
    let mut swapped = params.clone();
    let (a, b) = (
        swapped
            .iter()
            .position(|t| t.name == "conv5_1.bias")
            .unwrap(),
        swapped
            .iter()
            .position(|t| t.name == "conv5_2.bias")
            .unwrap(),
    );
    let tmp = swapped[a].data.clone();
    swapped[a].data = swapped[b].data.clone();
    swapped[b].data = tmp;
    let wrong = relative_error(&logits(&config, &swapped), &want);
    assert!(
        wrong > 1e-2,
        "swapping conv5 biases moved the logits by only {wrong:.3e}"
    );
}
