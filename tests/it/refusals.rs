//! What used to be accepted and then went wrong quietly: files prepare could not read, empty
//! classes, keys without effect, a network too large for the machine. Each is now listed,
//! refused naming the key, or made to work.

use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use crate::cli::{text, vgg};
use crate::fixtures::{self, ValForm};
use crate::messages::{pipeline, toy};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unreadable_and_misplaced_source_files_are_listed_in_skipped_tsv() {
    let fx = fixtures::imagenet(1, ValForm::ClassFolders);
    let train = fx.root.join("train");
    let class = train.join(fixtures::CLASSES[0]);
    std::os::unix::fs::symlink(class.join("nowhere.JPEG"), class.join("dangling.JPEG")).unwrap();
    std::os::unix::fs::symlink(class.join("loop.JPEG"), class.join("loop.JPEG")).unwrap();
    std::fs::write(train.join("stray.JPEG"), fixtures::jpeg(40, 40, 1)).unwrap();
    std::fs::create_dir(class.join("deeper")).unwrap();
    std::fs::write(class.join("deeper/x.JPEG"), fixtures::jpeg(40, 40, 2)).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"bad\xffname.JPEG");
    std::fs::write(class.join(odd), fixtures::jpeg(40, 40, 3)).unwrap();
    let shards = fx.dir.path().join("shards");
    let spec = fx.spec(&shards, "max_shortest_side = 96\n");
    crate::prepare::run(
        &spec,
        &vgg::data::prepare::PrepareOptions {
            splits: vec![vgg::data::source::Split::Train],
            ..Default::default()
        },
    );
    let report = std::fs::read_to_string(shards.join("train/skipped.tsv")).unwrap();
    let c = fixtures::CLASSES[0];
    for (key, kind) in [
        (format!("{c}/dangling.JPEG"), "unreadable-link"),
        (format!("{c}/loop.JPEG"), "unreadable-link"),
        ("stray.JPEG".to_string(), "outside-class-folder"),
        (format!("{c}/deeper"), "nested-folder"),
        (format!("{c}/bad\u{fffd}name.JPEG"), "name-not-utf8"),
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("{key}\t")))
            .unwrap_or_else(|| panic!("{key} missing from skipped.tsv:\n{report}"));
        assert!(line.contains(&format!("\t{kind}:")), "{line}");
    }
    // The good files are all still there.
    let split = vgg::data::store::PreparedSplit::open(&shards.join("train")).unwrap();
    assert_eq!(split.manifest.records as usize, fx.good_train.len());
}

#[test]
fn a_class_without_images_is_warned_at_prepare_and_refused_by_train() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    let reg = std::fs::read_to_string(d.join("datasets.toml")).unwrap();
    std::fs::write(
        d.join("datasets.toml"),
        format!("{reg}[datasets.holes]\nsource = \"folder\"\nroot = \"holes\"\n"),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("holes")).unwrap();
    let copied = Command::new("cp")
        .args(["-r", "data/toy/train", "holes/train"])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::create_dir_all(d.join("holes/train/zz-empty")).unwrap();
    let o = vgg(&["prepare", "holes", "-q"], d);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains("warning: train: 1 class(es) have no images: zz-empty"),
        "{}",
        text(&o)
    );
    let p = pipeline("").replace("classes = 3", "classes = 4");
    std::fs::write(d.join("p4.toml"), p).unwrap();
    let o = vgg(
        &["train", "p4.toml", "--dataset", "holes", "--out", "run"],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("1 class(es) with no images: zz-empty"),
        "{}",
        text(&o)
    );
    assert!(!d.join("run/last.safetensors").exists());
}

#[test]
fn keys_without_effect_are_refused_or_made_to_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    // drop_last = false cannot hold in training: refused naming file, line and key.
    let p = pipeline("").replace("threads = 1\n", "threads = 1\ndrop_last = false\n");
    let line = p.lines().position(|l| l == "drop_last = false").unwrap() + 1;
    std::fs::write(d.join("keep.toml"), p).unwrap();
    let o = vgg(&["train", "keep.toml", "--out", "run"], d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!(
            "keep.toml: line {line}, loader.drop_last = false: training cannot keep"
        )),
        "{}",
        text(&o)
    );
    // --dataset stands in for a missing `dataset =` key; without either, one clear error.
    let p = pipeline("").replace("dataset = \"toy\"\n", "");
    std::fs::write(d.join("anon.toml"), p).unwrap();
    let o = vgg(
        &[
            "preview",
            "anon.toml",
            "--dataset",
            "toy",
            "--out",
            "s.png",
            "--count",
            "2",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = vgg(
        &["preview", "anon.toml", "--out", "s.png", "--count", "2"],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("has no `dataset = \"NAME\"` key and no --dataset NAME was given"),
        "{}",
        text(&o)
    );
    // The summary of a pipeline's network shows the pipeline's dropout, not the paper's.
    let o = vgg(&["model", "summary", "p.toml"], d);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("no dropout") && !out.contains("dropout 0.5"),
        "{out}"
    );
    std::fs::write(
        d.join("d3.toml"),
        pipeline("").replace("dropout = 0.0", "dropout = 0.3"),
    )
    .unwrap();
    let o = vgg(&["model", "summary", "d3.toml"], d);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("dropout 0.3") && !out.contains("dropout 0.5"),
        "{out}"
    );
    let o = vgg(&["model", "summary", "A"], d);
    assert!(String::from_utf8_lossy(&o.stdout).contains("dropout 0.5"));
    // An [eval] crop other than the training crop would be ignored: refused.
    std::fs::write(
        d.join("crop.toml"),
        pipeline("").replace("crop = 32", "crop = 40"),
    )
    .unwrap();
    let o = vgg(&["train", "crop.toml", "--out", "run"], d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("eval.crop: 40 differs from the training crop 32"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_network_too_large_for_the_machine_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    // Beyond any machine: refused as configuration, not an abort in the allocator.
    let p = pipeline("").replace(
        "config = \"A\"\nwidth = 0.0625\n",
        "config = \"E\"\nwidth = 4\nfc = 1000000\n",
    );
    std::fs::write(d.join("huge.toml"), p).unwrap();
    let o = vgg(&["train", "huge.toml", "--out", "run"], d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("model.fc") && stderr(&o).contains("lower fc, width or classes"),
        "{}",
        text(&o)
    );
    // Within the parameter bound but not within this machine's memory (as the test tells it).
    let o = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["train", "p.toml", "--out", "run"])
        .env("VGG_MEM_AVAILABLE", "1000000")
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("training needs about")
            && err.contains("more than the 1.0 MiB this machine has available")
            && err.contains("lower loader.batch_size"),
        "{}",
        text(&o)
    );
    assert!(!d.join("run/last.safetensors").exists());
}

#[test]
fn an_evaluation_too_large_for_the_machine_is_refused_before_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    let o = vgg(&["train", "p.toml", "--out", "run", "-q"], d);
    assert!(o.status.success(), "{}", text(&o));
    let eval = |limit: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vgg"));
        c.args(["eval", "toy", "--checkpoint", "run/last.safetensors"])
            .args(["--protocol", "dense", "--scales", "64", "--json"])
            .current_dir(d);
        if let Some(l) = limit {
            c.env("VGG_MEM_AVAILABLE", l);
        }
        c.output().unwrap()
    };
    let o = eval(None);
    assert!(o.status.success(), "{}", text(&o));
    let o = eval(Some("100000"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("evaluation needs at least")
            && err.contains("more than the 0.1 MiB")
            && err.contains("scale Q = 64"),
        "{}",
        text(&o)
    );
}
