//! `vgg eval` and `vgg weights` through the binary: the torchvision conversion round trip on the
//! `tests/fixtures/torchvision-tiny` state_dict, and evaluation of small checkpoints on a
//! prepared synthetic dataset (JSON keys, fusion, the table, error messages).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::cli::{text, vgg};
use vgg::config::model::{Conv, VggConfig};
use vgg::config::training::Init;
use vgg::net::checkpoint::{self, Checkpoint, NamedTensor};
use vgg::net::init;

fn ok_json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(o)))
}

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torchvision-tiny")
        .join(file)
}

/// A pipeline whose [model] is the fixture's network (A at width 1/32, fc 16, 10 classes,
/// 64x64 input: see the fixture's README), trained at a fixed S = 72.
fn fixture_pipeline(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        "dataset = \"toy\"\n[model]\nconfig = \"A\"\nwidth = 0.03125\nfc = 16\nclasses = 10\n\
         input = 64\n[[train.stages]]\nkind = \"decode\"\n[[train.stages]]\nkind = \"scale\"\n\
         s = 72\n[[train.stages]]\nkind = \"random_crop\"\nsize = 64\n[[train.stages]]\n\
         kind = \"normalize\"\n",
    )
    .unwrap();
    path
}

fn bits(t: &NamedTensor) -> Vec<u32> {
    t.data.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn torchvision_weights_convert_and_round_trip_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixture_pipeline(dir.path());
    let weights = fixture("weights.safetensors");
    let o = vgg(
        &[
            "weights",
            "from-torchvision",
            weights.to_str().unwrap(),
            "--config",
            pipeline.to_str().unwrap(),
            "--out",
            "ck.safetensors",
            "--json",
        ],
        dir.path(),
    );
    let v = ok_json(&o);
    assert_eq!(v["tensors"], 22);
    assert_eq!(v["parameters"], 10622);
    assert_eq!(v["classes"], 10);
    let ck = Checkpoint::load(&dir.path().join("ck.safetensors")).unwrap();
    assert!(ck.momenta.is_none() && ck.state.is_none());
    assert_eq!(
        (ck.config.classes, ck.config.input, ck.config.fc),
        (10, 64, 16)
    );
    assert_eq!(ck.params[0].name, "conv1_1.weight");

    let o = vgg(
        &[
            "weights",
            "to-torchvision",
            "ck.safetensors",
            "--out",
            "out/tv.safetensors",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let (original, _) = checkpoint::read_tensors(&weights).unwrap();
    let (back, metadata) =
        checkpoint::read_tensors(&dir.path().join("out/tv.safetensors")).unwrap();
    assert_eq!(metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(original.len(), back.len());
    for (a, b) in original.iter().zip(&back) {
        assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
        assert_eq!(bits(a), bits(b), "{}", a.name);
    }
}

#[test]
fn weights_refuse_the_wrong_network_and_batch_norm() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixture("weights.safetensors");
    // The full-width A does not fit the tiny state_dict: the error names the file and tensor.
    let o = vgg(
        &[
            "weights",
            "from-torchvision",
            weights.to_str().unwrap(),
            "--config",
            "vgg11",
            "--out",
            "a.safetensors",
        ],
        dir.path(),
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("weights.safetensors") && err.contains("features.0.weight"),
        "{}",
        text(&o)
    );
    assert!(!dir.path().join("a.safetensors").exists());

    // A vgg*_bn state_dict.
    let (mut tensors, _) = checkpoint::read_tensors(&weights).unwrap();
    for name in ["features.1.running_mean", "features.1.running_var"] {
        tensors.push(NamedTensor::zeros(name, vec![2]));
    }
    checkpoint::write_tensors(&dir.path().join("bn.safetensors"), &tensors, HashMap::new())
        .unwrap();
    let pipeline = fixture_pipeline(dir.path());
    let o = vgg(
        &[
            "weights",
            "from-torchvision",
            "bn.safetensors",
            "--config",
            pipeline.to_str().unwrap(),
            "--out",
            "bn-ck.safetensors",
        ],
        dir.path(),
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("batch-norm"),
        "{}",
        text(&o)
    );
}

/// 3 classes, 4 validation images each (short sides 40-64), prepared with `vgg prepare`.
const VAL_IMAGES: u64 = 12;

fn prepared_toy(dir: &Path) {
    std::fs::write(
        dir.join("datasets.toml"),
        "[datasets.toy]\nsource = \"synthetic\"\n[datasets.toy.synthetic]\nclasses = 3\n\
         train_per_class = 1\nval_per_class = 4\nmin_short_side = 40\nmax_short_side = 64\n\
         [datasets.toy.store]\nmax_shortest_side = 64\n\
         [datasets.unprepared]\nsource = \"folder\"\nroot = \"nowhere\"\n",
    )
    .unwrap();
    let o = vgg(
        &[
            "--datasets",
            "datasets.toml",
            "prepare",
            "toy",
            "--split",
            "val",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// Two blocks (conv3-4, conv3-8), FC 16, 3 classes, 16x16 input.
fn tiny_config(classes: u32) -> VggConfig {
    let c = |kernel, channels| Conv { kernel, channels };
    VggConfig {
        name: "tiny".into(),
        blocks: vec![vec![c(3, 4)], vec![c(3, 8)]],
        lrn: None,
        fc: 16,
        classes,
        input: 16,
        in_channels: 3,
    }
}

fn write_checkpoint(path: &Path, classes: u32, seed: u64) {
    let config = tiny_config(classes);
    let params = init::initialise(&config, Init::Kaiming, seed);
    Checkpoint {
        config,
        params,
        momenta: None,
        state: None,
    }
    .save(path)
    .unwrap();
}

fn eval_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--datasets", "datasets.toml", "eval", "toy"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--threads", "1"]);
    args
}

fn check_errors(v: &serde_json::Value) {
    for key in ["top1_error", "top5_error"] {
        let e = v[key].as_f64().unwrap_or_else(|| panic!("{key}: {v}"));
        assert!((0.0..=1.0).contains(&e), "{key} = {e}");
    }
}

#[test]
fn eval_json_scores_every_image_and_fuses_networks() {
    let dir = tempfile::tempdir().unwrap();
    prepared_toy(dir.path());
    write_checkpoint(&dir.path().join("a.safetensors"), 3, 1);
    write_checkpoint(&dir.path().join("b.safetensors"), 3, 2);

    let o = vgg(
        &eval_args(&[
            "--checkpoint",
            "a.safetensors",
            "--protocol",
            "dense",
            "--scales",
            "40",
            "--json",
        ]),
        dir.path(),
    );
    let v = ok_json(&o);
    assert_eq!(v["images"], VAL_IMAGES);
    check_errors(&v);
    assert_eq!(v["protocol"], "dense");
    assert_eq!(v["scales"], serde_json::json!([40]));
    assert_eq!(v["flip"], true);
    assert!(v["images_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v.get("peak_rss_bytes").is_some(), "{v}");
    let per = v["per_network"].as_array().unwrap();
    assert_eq!(per.len(), 1);
    assert_eq!(per[0]["name"], "a");
    assert_eq!(per[0]["config"], "tiny");
    assert_eq!(per[0]["top1_error"], v["top1_error"]);
    let predictions = v["predictions"].as_array().unwrap();
    assert_eq!(predictions.len() as u64, VAL_IMAGES);
    let mut top1_wrong = 0;
    for (i, p) in predictions.iter().enumerate() {
        assert_eq!(p["index"], i as u64);
        let label = p["label"].as_i64().unwrap();
        assert!((0..3).contains(&label), "{p}");
        // Three classes: all of them are in the top five, which holds only three.
        let top5 = p["top5"].as_array().unwrap();
        assert_eq!(top5.len(), 3, "{p}");
        let sum: f64 = top5.iter().map(|c| c["posterior"].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{p}");
        assert_eq!(p["top5_correct"], true);
        let best = top5[0]["class"].as_i64().unwrap();
        assert_eq!(p["top1_correct"], best == label, "{p}");
        top1_wrong += u64::from(best != label);
    }
    let top1 = v["top1_error"].as_f64().unwrap();
    assert!((top1 - top1_wrong as f64 / VAL_IMAGES as f64).abs() < 1e-12);
    assert_eq!(v["top5_error"], 0.0);

    // Two networks: each scored on its own, and the fusion.
    let o = vgg(
        &eval_args(&[
            "--checkpoint",
            "a.safetensors",
            "--checkpoint",
            "b.safetensors",
            "--protocol",
            "dense",
            "--scales",
            "40",
            "--json",
        ]),
        dir.path(),
    );
    let fused = ok_json(&o);
    assert_eq!(fused["images"], VAL_IMAGES);
    check_errors(&fused);
    let per = fused["per_network"].as_array().unwrap();
    assert_eq!(per.len(), 2);
    assert_eq!(
        (&per[0]["name"], &per[1]["name"]),
        (&"a".into(), &"b".into())
    );
    // The first network alone scores as it did on its own.
    assert_eq!(per[0]["top1_error"], v["top1_error"]);
    let rows = fused["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2]["config"], "tiny+tiny");
    assert_eq!(rows[2]["top1_error"], fused["top1_error"]);
    assert_eq!(
        fused["predictions"].as_array().unwrap().len() as u64,
        VAL_IMAGES
    );
}

#[test]
fn eval_of_a_pipeline_prints_the_paper_shaped_table() {
    let dir = tempfile::tempdir().unwrap();
    prepared_toy(dir.path());
    write_checkpoint(&dir.path().join("a.safetensors"), 3, 1);
    // Trained at S in [40; 56]: the single-scale test uses Q = 48.
    std::fs::write(
        dir.path().join("p.toml"),
        "dataset = \"toy\"\n[[train.stages]]\nkind = \"decode\"\n[[train.stages]]\n\
         kind = \"scale_jitter\"\nmin = 40\nmax = 56\n[[train.stages]]\nkind = \"random_crop\"\n\
         size = 16\n[[train.stages]]\nkind = \"normalize\"\n",
    )
    .unwrap();
    let base = [
        "--datasets",
        "datasets.toml",
        "eval",
        "p.toml",
        "--checkpoint",
        "a.safetensors",
        "--threads",
        "1",
        "--limit",
        "5",
    ];
    let mut args = base.to_vec();
    args.extend(["--protocol", "multi-crop", "--grid", "2", "--json"]);
    let v = ok_json(&vgg(&args, dir.path()));
    assert_eq!(v["scales"], serde_json::json!([48]));
    assert_eq!(v["train_scale"], "[40;56]");
    assert_eq!(v["images"], 5);
    assert_eq!(v["rows"][0]["test_scales"], "48");
    check_errors(&v);

    let mut args = base.to_vec();
    args.extend(["--multi-scale", "--no-flip"]);
    let o = vgg(&args, dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "ConvNet config.",
        "top-1 val. error (%)",
        "[40;56]",
        "40,48,56",
        "dense",
        "images/s",
        "peak RSS",
    ] {
        assert!(out.contains(want), "`{want}` missing:\n{}", text(&o));
    }
}

#[test]
fn eval_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    prepared_toy(dir.path());
    write_checkpoint(&dir.path().join("a.safetensors"), 3, 1);
    write_checkpoint(&dir.path().join("five.safetensors"), 5, 1);
    let fails = |args: &[&str]| -> String {
        let o = vgg(&eval_args(args), dir.path());
        assert!(!o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };

    let err = fails(&["--checkpoint", "a.safetensors", "--protocol", "fancy"]);
    assert!(
        err.contains("fancy")
            && ["centre", "dense", "multi-crop", "dense+multi-crop"]
                .iter()
                .all(|p| err.contains(p)),
        "{err}"
    );

    let err = fails(&["--checkpoint", "missing.safetensors", "--scales", "40"]);
    assert!(err.contains("missing.safetensors"), "{err}");

    let err = fails(&["--checkpoint", "five.safetensors", "--scales", "40"]);
    assert!(err.contains("5 classes") && err.contains("has 3"), "{err}");

    let err = fails(&["--checkpoint", "a.safetensors", "--scales", "8"]);
    assert!(err.contains("test scale 8"), "{err}");

    let o = vgg(
        &[
            "--datasets",
            "datasets.toml",
            "eval",
            "unprepared",
            "--checkpoint",
            "a.safetensors",
        ],
        dir.path(),
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("vgg prepare unprepared"),
        "{}",
        text(&o)
    );
}

#[test]
fn eval_refuses_zero_images_and_a_limit_samples_every_class() {
    let dir = tempfile::tempdir().unwrap();
    prepared_toy(dir.path());
    write_checkpoint(&dir.path().join("a.safetensors"), 3, 1);
    let base = ["--checkpoint", "a.safetensors", "--scales", "40"];
    let mut args = base.to_vec();
    args.extend(["--limit", "0"]);
    let o = vgg(&eval_args(&args), dir.path());
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--limit"), "{}", text(&o));

    // 6 of the 12 images (4 per class, stored class by class): two of each class.
    let mut args = base.to_vec();
    args.extend(["--limit", "6", "--json"]);
    let v = ok_json(&vgg(&eval_args(&args), dir.path()));
    assert_eq!(v["images"], 6);
    assert_eq!(v["sample_seed"], 0);
    let predictions = v["predictions"].as_array().unwrap();
    let mut labels: Vec<i64> = predictions
        .iter()
        .map(|p| p["label"].as_i64().unwrap())
        .collect();
    labels.sort_unstable();
    assert_eq!(labels, [0, 0, 1, 1, 2, 2]);
    let indices: Vec<u64> = predictions
        .iter()
        .map(|p| p["index"].as_u64().unwrap())
        .collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
    // Another seed, another sample of the same shape.
    let mut args = base.to_vec();
    args.extend(["--limit", "6", "--sample-seed", "5", "--json"]);
    let w = ok_json(&vgg(&eval_args(&args), dir.path()));
    assert_eq!(w["images"], 6);
    let text_out = vgg(
        &eval_args(&[
            "--checkpoint",
            "a.safetensors",
            "--scales",
            "40",
            "--limit",
            "6",
        ]),
        dir.path(),
    );
    assert!(
        String::from_utf8_lossy(&text_out.stdout)
            .contains("a fixed sample spread over the classes"),
        "{}",
        text(&text_out)
    );
}

#[test]
fn eval_refuses_a_checkpoint_of_other_classes_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    prepared_toy(dir.path());
    let config = tiny_config(3);
    let ck = Checkpoint {
        params: init::initialise(&config, Init::Kaiming, 1),
        config,
        momenta: None,
        state: None,
    };
    let split = vgg::data::store::PreparedSplit::open(&dir.path().join("shards/toy/val")).unwrap();
    let mut wnids: Vec<String> = split
        .manifest
        .classes
        .iter()
        .map(|c| c.wnid.clone())
        .collect();
    wnids.swap(0, 1);
    ck.save_with_classes(&dir.path().join("other.safetensors"), Some(&wnids))
        .unwrap();
    let args = ["--checkpoint", "other.safetensors", "--scales", "40"];
    let o = vgg(&eval_args(&args), dir.path());
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("label 0 is"), "{}", text(&o));
    let mut allowed = args.to_vec();
    allowed.push("--allow-class-mismatch");
    let o = vgg(&eval_args(&allowed), dir.path());
    assert!(o.status.success(), "{}", text(&o));
    // One without a class list (an import) is evaluated, with a note.
    ck.save(&dir.path().join("plain.safetensors")).unwrap();
    let o = vgg(
        &eval_args(&["--checkpoint", "plain.safetensors", "--scales", "40"]),
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no class list"), "{}", text(&o));
}

#[test]
fn an_output_that_is_its_own_input_is_refused_and_the_input_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    write_checkpoint(&d.join("ck.safetensors"), 3, 1);
    std::os::unix::fs::symlink("ck.safetensors", d.join("link.safetensors")).unwrap();
    let before = std::fs::read(d.join("ck.safetensors")).unwrap();
    let pipeline = fixture_pipeline(d);
    let pipeline = pipeline.to_str().unwrap();
    let same = [
        "ck.safetensors",
        "./ck.safetensors",
        "sub/../ck.safetensors",
        "new/../ck.safetensors",
        "link.safetensors",
    ];
    for out in same {
        let cases: [Vec<&str>; 3] = [
            vec!["weights", "to-torchvision", "ck.safetensors", "--out", out],
            vec![
                "weights",
                "from-torchvision",
                "ck.safetensors",
                "--config",
                pipeline,
                "--out",
                out,
            ],
            vec![
                "model",
                "export",
                pipeline,
                "--weights",
                "ck.safetensors",
                "--out",
                out,
            ],
        ];
        for args in cases {
            let o = vgg(&args, d);
            assert!(!o.status.success(), "{args:?}: {}", text(&o));
            assert!(text(&o).contains("is the input"), "{args:?}: {}", text(&o));
            assert!(
                std::fs::read(d.join("ck.safetensors")).unwrap() == before,
                "{args:?} changed the input"
            );
            assert!(std::fs::symlink_metadata(d.join("link.safetensors"))
                .unwrap()
                .file_type()
                .is_symlink());
        }
    }
    // Another file is written as before.
    let o = vgg(
        &[
            "weights",
            "to-torchvision",
            "ck.safetensors",
            "--out",
            "sub/tv.safetensors",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
}
