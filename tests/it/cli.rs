//! The `vgg` binary: exit codes, messages, JSON keys.

use std::path::Path;
use std::process::{Command, Output};

use crate::fixtures::{self, ValForm};

fn vgg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runs vgg")
}

fn text(o: &Output) -> String {
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
}

#[test]
fn verify_passes_then_names_the_flipped_record() {
    let (fx, shards) = prepared(2);
    let o = vgg(&["verify", shards.to_str().unwrap()], fx.dir.path());
    assert!(o.status.success(), "{}", text(&o));

    let path = shards.join("train/train-00000.vggshard");
    let base = std::fs::read(&path).unwrap();
    let (key, payload) = {
        let r = vgg::shard::ShardReader::open(&path).unwrap();
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
    assert_eq!(v["version"], vgg::runtime::ORT_VERSION);
    assert!(v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "CPUExecutionProvider"));
}
