//! The `vgg` binary: exit codes, messages, JSON keys.

use std::path::Path;
use std::process::{Command, Output};

use crate::fixtures::{self, ValForm};

pub fn vgg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runs vgg")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn prepared(per_class: u32) -> (fixtures::Fixture, std::path::PathBuf) {
    let fx = fixtures::imagenet(per_class, ValForm::Kaggle);
    let shards = fx.dir.path().join("shards");
    fx.registry(
        "fx",
        &shards,
        "max_shortest_side = 96\nrecords_per_shard = 4\n",
    );
    let o = vgg(
        &["--datasets", "fx.toml", "prepare", "fx", "--threads", "2"],
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("manifest"), "{out}");
    (fx, shards)
}

#[test]
fn inspect_json_has_the_stable_keys() {
    let (fx, shards) = prepared(3);
    let o = vgg(
        &["inspect", shards.to_str().unwrap(), "--json"],
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let train_good = fx.good_train.len() as u64;
    assert_eq!(v["records"], train_good + 6);
    assert_eq!(v["classes"], 3);
    assert_eq!(v["skipped"], fx.bad_train.len() as u64);
    assert!(v["shards"].as_u64().unwrap() >= 4);
    assert!(v["bytes"].as_u64().unwrap() > 0);
    // A dataset name works as well as a directory.
    let o = vgg(&["--datasets", "fx.toml", "inspect", "fx"], fx.dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("n01440764"));
    // A folder named like the dataset in the current directory does not shadow it; ./fx does.
    std::fs::create_dir(fx.dir.path().join("fx")).unwrap();
    let o = vgg(&["--datasets", "fx.toml", "inspect", "fx"], fx.dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("./fx for the folder"),
        "{}",
        text(&o)
    );
    let o = vgg(&["--datasets", "fx.toml", "inspect", "./fx"], fx.dir.path());
    assert!(!o.status.success(), "{}", text(&o));
}

#[test]
fn verify_passes_then_names_the_flipped_record() {
    let (fx, shards) = prepared(2);
    let o = vgg(&["verify", shards.to_str().unwrap()], fx.dir.path());
    assert!(o.status.success(), "{}", text(&o));

    let path = shards.join("train/train-00000.vggshard");
    let base = std::fs::read(&path).unwrap();
    let (key, payload) = {
        let r = vgg::data::shard::ShardReader::open(&path).unwrap();
        let rec = r.record(1).unwrap();
        (rec.key.to_string(), rec.bytes.to_vec())
    };
    // The record's offset, found by its content.
    let off = base
        .windows(payload.len())
        .position(|w| w == &payload[..])
        .unwrap();
    let mut bad = base.clone();
    bad[off + payload.len() / 2] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let o = vgg(&["verify", shards.to_str().unwrap()], fx.dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("train-00000.vggshard") && err.contains("record 1") && err.contains(&key),
        "{}",
        text(&o)
    );
}

#[test]
fn broken_registry_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[datasets.a]\nsource = \"folder\"\nroot = \"x\"\n\n[datasets.a.store]\nmax_shortest_side = \"big\"\n").unwrap();
    let o = vgg(&["--datasets", "bad.toml", "prepare", "a"], dir.path());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("line 6"),
        "{}",
        text(&o)
    );
}

#[test]
fn unknown_dataset_lists_the_known_ones() {
    let (fx, _) = prepared(1);
    let o = vgg(
        &["--datasets", "fx.toml", "prepare", "imagenet"],
        fx.dir.path(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no dataset named `imagenet`") && err.contains("fx"),
        "{}",
        text(&o)
    );
}

#[test]
fn synthetic_dataset_generates_prepares_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("datasets.toml"),
        "[datasets.toy]\nsource = \"synthetic\"\n[datasets.toy.synthetic]\nclasses = 3\ntrain_per_class = 4\nval_per_class = 2\nmin_short_side = 48\nmax_short_side = 96\n[datasets.toy.store]\nmax_shortest_side = 64\nshard_size = \"64KiB\"\n",
    )
    .unwrap();
    let o = vgg(&["prepare", "toy", "--json"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["split"], "train");
    assert_eq!(v[0]["records"], 12);
    assert_eq!(v[1]["records"], 6);
    assert!(dir.path().join("data/toy/SYNTHETIC.txt").is_file());
    let o = vgg(&["verify", "toy"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    // Running again keeps everything.
    let o = vgg(&["prepare", "toy", "--json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["shards_written"], 0);
    assert_eq!(v[0]["shards_kept"], v[0]["shards_planned"]);
}

#[test]
fn missing_onnx_runtime_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .arg("runtime")
        .env(
            "ORT_DYLIB_PATH",
            dir.path().join("nowhere/libonnxruntime.so"),
        )
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one sentence: {err}");
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("make setup"),
        "{err}"
    );
}

#[test]
fn runtime_reports_the_installed_library() {
    let dir = tempfile::tempdir().unwrap();
    let o = vgg(&["runtime", "--json"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], vgg::net::runtime::ORT_VERSION);
    assert!(v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "CPUExecutionProvider"));
}

/// A prepared toy dataset with a pipeline file for it, in a temporary directory.
fn toy_with_pipeline() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::loader::prepared_toy(dir.path());
    std::fs::write(
        dir.path().join("toy.toml"),
        "dataset = \"toy\"\n[loader]\nbatch_size = 4\n[[train.stages]]\nkind = \"decode\"\n[[train.stages]]\nkind = \"scale_jitter\"\nmin = 32\nmax = 64\n[[train.stages]]\nkind = \"random_crop\"\nsize = 28\n[[train.stages]]\nkind = \"flip\"\n[[train.stages]]\nkind = \"pca_lighting\"\n[[train.stages]]\nkind = \"normalize\"\n",
    )
    .unwrap();
    dir
}

#[test]
fn preview_writes_a_contact_sheet() {
    let dir = toy_with_pipeline();
    let o = vgg(
        &[
            "preview",
            "toy.toml",
            "--out",
            "sheet.png",
            "--count",
            "6",
            "--columns",
            "3",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let img = image::open(dir.path().join("sheet.png")).unwrap().to_rgb8();
    // 3 columns x 2 rows of 28-pixel tiles with captions and padding.
    assert!(
        img.width() >= 3 * 28 && img.width() < 3 * 28 + 60,
        "{}",
        img.width()
    );
    assert!(
        img.height() > 2 * 28 && img.height() < 2 * 28 + 80,
        "{}",
        img.height()
    );
    // Not a blank sheet: the tiles have colour variety.
    let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 100, "{}", distinct.len());
}

#[test]
fn bench_loader_json_has_the_stable_keys() {
    let dir = toy_with_pipeline();
    let o = vgg(
        &[
            "bench",
            "loader",
            "toy.toml",
            "--threads",
            "1",
            "--batches",
            "3",
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "images_per_sec",
        "images_per_sec_per_core",
        "decode_only_images_per_sec",
        "ratio_to_decode",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
    assert_eq!(v["dataset"], "toy");
}

#[test]
fn a_pipeline_naming_an_unprepared_dataset_says_what_to_run() {
    let dir = toy_with_pipeline();
    let text_ = std::fs::read_to_string(dir.path().join("datasets.toml")).unwrap();
    std::fs::write(
        dir.path().join("datasets.toml"),
        text_ + "[datasets.other]\nsource = \"folder\"\nroot = \"nowhere\"\n",
    )
    .unwrap();
    let o = vgg(
        &[
            "preview",
            "toy.toml",
            "--dataset",
            "other",
            "--out",
            "x.png",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("vgg prepare other"), "{}", text(&o));
    assert!(!dir.path().join("x.png").exists());
}

#[test]
fn model_summary_json_has_the_paper_totals() {
    let dir = tempfile::tempdir().unwrap();
    for (config, params) in [
        ("A", 132_863_336u64),
        ("B", 133_047_848),
        ("D", 138_357_544),
        ("E", 143_667_240),
    ] {
        let o = vgg(&["model", "summary", config, "--json"], dir.path());
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["parameters"], params, "{config}");
        assert!(v["flops"].as_u64().unwrap() > 10_000_000_000, "{config}");
    }
    // A pipeline file's [model] table: the demo's narrow A with a 10-class head at 64 pixels.
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.toml");
    let o = vgg(
        &["model", "summary", demo.to_str().unwrap(), "--json"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config"]["classes"], 10);
    assert_eq!(v["config"]["input"], 64);
    let o = vgg(&["model", "summary", "Z"], dir.path());
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("A, A-LRN, B, C, D, E"),
        "{}",
        text(&o)
    );
}

#[test]
fn model_export_writes_graphs_onnx_runtime_loads_with_and_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("p.toml"),
        "dataset = \"x\"\n[model]\nconfig = \"A\"\nwidth = 0.0625\nclasses = 4\n\
         [loader]\nbatch_size = 8\n[[train.stages]]\nkind = \"decode\"\n\
         [[train.stages]]\nkind = \"scale\"\ns = 36\n\
         [[train.stages]]\nkind = \"random_crop\"\nsize = 32\n[[train.stages]]\nkind = \"normalize\"\n",
    )
    .unwrap();
    let p = vgg::config::pipeline::Pipeline::load(&d.join("p.toml")).unwrap();
    let config = p.model.clone().unwrap();
    let ck = vgg::net::checkpoint::Checkpoint {
        params: vgg::net::init::initialise(&config, vgg::config::training::Init::Kaiming, 1),
        config,
        momenta: None,
        state: None,
    };
    ck.save(&d.join("w.safetensors")).unwrap();
    let settings = vgg::net::session::SessionSettings::default();
    let cases: [(&[&str], usize); 4] = [
        (&[], 1 + 22),
        (&["--dense"], 1 + 22),
        (&["--dense", "--weights", "w.safetensors"], 1),
        (&["--train-step"], 1 + 44 + 4),
    ];
    for (flags, inputs) in cases {
        let mut args = vec!["model", "export", "p.toml", "--out", "m.onnx"];
        args.extend_from_slice(flags);
        let o = vgg(&args, d);
        assert!(
            o.status.success(),
            "{flags:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let bytes = std::fs::read(d.join("m.onnx")).unwrap();
        let s = vgg::net::session::build_from_bytes(&bytes, "exported", &settings).unwrap();
        assert_eq!(s.inputs().len(), inputs, "{flags:?}");
    }
    // A checkpoint of another network is refused, naming both.
    let o = vgg(
        &[
            "model",
            "export",
            "D",
            "--weights",
            "w.safetensors",
            "--out",
            "d.onnx",
        ],
        d,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("w.safetensors"));
}

#[test]
fn values_clap_parses_are_refused_before_any_work_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "nowhere", "--checkpoint", "none.safetensors"];
        args.extend(extra);
        vgg(&args, dir.path())
    };
    for (extra, says) in [
        (&["--split", "all"][..], "all"),
        (&["--protocol", "dens"][..], "unknown protocol"),
        (&["--scales", "256,0"][..], "positive"),
        (&["--scales", "256,,384"][..], "not a whole number"),
        (&["--scales", "256,5000"][..], "beyond 4096"),
        (&["--device", "gpu"][..], "not a device"),
        (&["--train-scale", "[512;256]"][..], "training scale"),
    ] {
        let o = eval(extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{extra:?}: {}", text(&o));
    }
    let o = vgg(
        &["preview", "p.toml", "--out", "x.png", "--count", "0"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A scale listed twice is refused before anything is read.
    let o = eval(&["--scales", "256,384,256"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("listed twice"),
        "{}",
        text(&o)
    );
    // Spaces around a test scale are fine: the arguments parse, and the error is then about
    // the missing registry.
    let o = eval(&["--scales", "256, 384"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("datasets.toml") && !err.contains("invalid value"),
        "{}",
        text(&o)
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn a_prepare_of_a_dataset_being_prepared_is_refused_naming_the_holder() {
    let (fx, shards) = prepared(2);
    let held = vgg::util::lock::FolderLock::acquire(&shards, "vgg prepare").unwrap();
    let o = vgg(&["--datasets", "fx.toml", "prepare", "fx"], fx.dir.path());
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("in use by process") && err.contains(&std::process::id().to_string()),
        "{}",
        text(&o)
    );
    drop(held);
    let o = vgg(&["--datasets", "fx.toml", "prepare", "fx"], fx.dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(!shards.join(vgg::util::lock::LOCK_FILE).exists());
}

/// `vgg bench train-step`: vgg's figures with its phase split; with `--peer`, the peer's
/// figures and the ratio of the two (here from a stand-in peer that reports 1000 ms/step);
/// and a peer that cannot run gives exit status 2 with how to install PyTorch, vgg's
/// figures still printed.
#[test]
fn bench_train_step_reports_the_ratio_to_its_peer() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-python");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho '{\"ms_per_step\": 1000.0, \"images_per_sec\": 2.0, \"forward_ms\": 300.0, \
         \"backward_ms\": 600.0, \"update_ms\": 100.0, \"machine\": {\"torch\": \"stand-in\"}}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = [
        "bench",
        "train-step",
        "--width",
        "0.0625",
        "--input",
        "32",
        "--batch",
        "2",
        "--steps",
        "2",
        "--profile-steps",
        "1",
        "--json",
    ];
    let mut args = base.to_vec();
    args.extend(["--peer", "--python", fake.to_str().unwrap()]);
    let o = vgg(&args, dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ms = r["vgg_ms_per_step"].as_f64().unwrap();
    assert!(ms > 0.0, "{r}");
    assert_eq!(r["peer_ms_per_step"].as_f64(), Some(1000.0));
    let ratio = r["ratio"].as_f64().unwrap();
    assert!((ratio - ms / 1000.0).abs() < 1e-9, "{ratio} vs {ms}");
    assert_eq!(r["peer_phases"]["backward_ms"].as_f64(), Some(600.0));
    let p = &r["phases"];
    let phases: f64 = ["forward_ms", "backward_ms", "update_ms"]
        .iter()
        .map(|k| p[k].as_f64().unwrap())
        .sum();
    assert!(
        p["backward_ms"].as_f64().unwrap() > 0.0 && phases > 0.0,
        "the profile split the step: {p}"
    );

    let mut args = base.to_vec();
    args.extend(["--peer", "--python", "/nonexistent/python"]);
    let o = vgg(&args, dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["vgg_ms_per_step"].as_f64().unwrap() > 0.0);
    assert!(r["ratio"].is_null());
    let err = r["peer_error"].as_str().unwrap();
    assert!(err.contains("pip install torch"), "{err}");
}
