//! What the binary says when it is given the wrong thing: each message names what was given,
//! what is expected instead, and a command that actually helps.

use std::path::Path;

use vgg::config::pipeline::Pipeline;

use crate::cli::{text, vgg};

/// 3 synthetic classes, 2 training and 2 validation images each, plus a dataset whose root does
/// not exist and one whose source has a train/ folder and no val/ folder.
pub(crate) fn toy(dir: &Path) {
    std::fs::write(
        dir.join("datasets.toml"),
        "[datasets.toy]\nsource = \"synthetic\"\n[datasets.toy.synthetic]\nclasses = 3\n\
         train_per_class = 2\nval_per_class = 2\nmin_short_side = 40\nmax_short_side = 64\n\
         [datasets.toy.store]\nmax_shortest_side = 64\nrecords_per_shard = 3\n\
         [datasets.missing]\nsource = \"folder\"\nroot = \"src_missing\"\n\
         [datasets.noval]\nsource = \"folder\"\nroot = \"noval\"\n",
    )
    .unwrap();
    let o = vgg(&["prepare", "toy", "-q"], dir);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(dir.join("p.toml"), pipeline("")).unwrap();
}

/// A pipeline for `toy` (a 1/16-width VGG-A at 32 x 32) with `extra` appended.
pub(crate) fn pipeline(extra: &str) -> String {
    format!(
        "dataset = \"toy\"\n[model]\nconfig = \"A\"\nwidth = 0.0625\nclasses = 3\n\
         [loader]\nbatch_size = 2\nthreads = 1\n\
         [[train.stages]]\nkind = \"decode\"\n[[train.stages]]\nkind = \"scale_jitter\"\nmin = 36\nmax = 48\n\
         [[train.stages]]\nkind = \"random_crop\"\nsize = 32\n[[train.stages]]\nkind = \"normalize\"\n\
         [eval]\nscale = 40\ncrop = 32\n[optimizer]\nlr = 0.001\ndropout = 0.0\n[training]\nepochs = 1\n{extra}"
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_folder_where_a_file_is_expected_and_the_reverse_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    // A run folder given as the checkpoint.
    std::fs::create_dir(d.join("runs")).unwrap();
    let o = vgg(
        &[
            "eval",
            "toy",
            "--checkpoint",
            "runs",
            "--protocol",
            "centre",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("runs: is a folder; a checkpoint file (.safetensors) is expected"),
        "{}",
        text(&o)
    );
    assert!(!stderr(&o).contains("os error 19"), "{}", text(&o));
    // A folder in place of a shard file.
    let shard = d.join("shards/toy/val/val-00000.vggshard");
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    let o = vgg(&["inspect", "toy"], d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("val-00000.vggshard: is a folder; a shard file"),
        "{}",
        text(&o)
    );
    // A folder (existing, or by its trailing slash) where an output file is expected.
    for out in ["runs/", "runs", "new/"] {
        let o = vgg(&["preview", "p.toml", "--out", out, "--count", "1"], d);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            stderr(&o).contains("a file name is expected here"),
            "{}",
            text(&o)
        );
        assert!(!stderr(&o).contains("Not a directory"), "{}", text(&o));
    }
    assert!(!d.join("new").exists());
    // A file where the run folder is expected.
    std::fs::write(d.join("afile"), b"x").unwrap();
    let o = vgg(&["train", "p.toml", "--out", "afile/"], d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("--out afile is a file; a run folder is expected"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(d.join("afile")).unwrap(), b"x");
}

#[test]
fn a_plain_tensor_file_points_to_the_torchvision_import() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    let bytes = safetensors::serialize([("features.0.weight", view)], None).unwrap();
    std::fs::write(d.join("plain.safetensors"), bytes).unwrap();
    let o = vgg(
        &[
            "eval",
            "toy",
            "--checkpoint",
            "plain.safetensors",
            "--protocol",
            "centre",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("not a vgg checkpoint") && err.contains("vgg weights from-torchvision"),
        "{}",
        text(&o)
    );
    assert!(!err.contains("read_tensors"), "{}", text(&o));
}

#[test]
fn prepare_and_open_hints_say_what_is_true() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    // A root that does not exist is called that.
    let o = vgg(&["prepare", "missing"], d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("the dataset's root ./src_missing does not exist"),
        "{}",
        text(&o)
    );
    // A source without val/: no advice to prepare what cannot be prepared.
    for class in ["a", "b", "c"] {
        let from = d.join("data/toy/train").read_dir().unwrap();
        let class_dir = d.join("noval/train").join(class);
        std::fs::create_dir_all(&class_dir).unwrap();
        for f in from.take(1) {
            let f = f.unwrap().path();
            let image = std::fs::read_dir(&f).unwrap().next().unwrap().unwrap();
            std::fs::copy(image.path(), class_dir.join(image.file_name())).unwrap();
        }
    }
    let o = vgg(&["prepare", "noval", "-q"], d);
    assert!(o.status.success(), "{}", text(&o));
    let o = vgg(
        &[
            "eval",
            "noval",
            "--checkpoint",
            "x.safetensors",
            "--protocol",
            "centre",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o)
            .contains("dataset `noval` has no val split: its source ./noval has no val/ folder"),
        "{}",
        text(&o)
    );
    assert!(!stderr(&o).contains("--split val"), "{}", text(&o));
    // A damaged store is not "not prepared"; the command it names repairs it.
    let shard = d.join("shards/toy/val/val-00000.vggshard");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&shard, &bytes).unwrap();
    let o = vgg(
        &[
            "eval",
            "toy",
            "--checkpoint",
            "x.safetensors",
            "--protocol",
            "centre",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("cannot be read")
            && err.contains("`vgg prepare toy --split val` redoes damaged shards"),
        "{}",
        text(&o)
    );
    assert!(!err.contains("not prepared"), "{}", text(&o));
    let o = vgg(&["prepare", "toy", "--split", "val", "-q"], d);
    assert!(o.status.success(), "{}", text(&o));
    let o = vgg(&["verify", "toy"], d);
    assert!(o.status.success(), "{}", text(&o));
    // The --part hint names the dataset.
    std::fs::remove_dir_all(d.join("shards/toy/train")).unwrap();
    let o = vgg(&["prepare", "toy", "--split", "train", "--part", "0/2"], d);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("run `vgg prepare toy --split train --merge`"),
        "{}",
        text(&o)
    );
    assert!(!out.contains("DATASET"), "{}", text(&o));
}

#[test]
fn config_errors_name_file_line_and_key_and_the_allowed_values() {
    let parse = |extra: &str, edit: &dyn Fn(String) -> String| {
        Pipeline::parse(&edit(pipeline(extra)), Path::new("p.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let text = pipeline("");
    let lr_line = text.lines().position(|l| l == "lr = 0.001").unwrap() + 1;
    let e = parse("", &|t| t.replace("lr = 0.001", "lr = -0.001"));
    assert!(
        e.contains(&format!("p.toml: line {lr_line}, optimizer.lr:")) && e.contains("positive"),
        "{e}"
    );
    let e = parse("", &|t| t.replace("size = 32", "size = 0"));
    assert!(e.contains("at least 1"), "{e}");
    assert!(!e.contains("larger than"), "{e}");
    // A key set in an inline table is found there too.
    let e = parse("init = { kind = \"normal\", std = -1.0 }\n", &|t| t);
    let init_line = pipeline("init").lines().count();
    assert!(
        e.contains(&format!("line {init_line}, training.init")),
        "{e}"
    );
}

#[test]
fn an_epoch_beyond_any_run_is_refused_by_preview() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    let o = vgg(
        &[
            "preview",
            "p.toml",
            "--out",
            "x.png",
            "--epoch",
            "18446744073709551615",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!stderr(&o).contains("empty"), "{}", text(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", text(&o));
    assert!(stderr(&o).contains("--epoch"), "{}", text(&o));
}

#[test]
fn epochs_are_numbered_from_zero_on_the_console_and_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    let o = vgg(&["train", "p.toml", "--out", "run"], d);
    assert!(o.status.success(), "{}", text(&o));
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.lines().any(|l| l.starts_with("epoch   0  loss")),
        "{out}"
    );
    assert!(out.contains("after epoch 0:"), "{out}");
    assert!(!out.contains("epoch   1"), "{out}");
    let metrics = std::fs::read_to_string(d.join("run/metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .map(|v| v["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [0], "{metrics}");
    let ck = vgg::net::checkpoint::Checkpoint::load(&d.join("run/last.safetensors")).unwrap();
    let state = ck.state.unwrap();
    assert_eq!(
        state["epoch"], 1,
        "the state names the next epoch, numbered from 0"
    );
}

/// `--replicas auto` (the default) gives the small toy network two CPU replicas and says so;
/// `--replicas 1` runs the fused step without the note; a bad count is refused, naming auto.
#[test]
fn auto_replicas_are_announced_and_a_bad_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    let o = vgg(&["train", "p.toml", "--out", "auto"], d);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stderr(&o).contains("note: 2 CPU replicas"), "{}", text(&o));
    let o = vgg(&["train", "p.toml", "--out", "one", "--replicas", "1"], d);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stderr(&o).contains("CPU replicas"), "{}", text(&o));
    let step = |run: &str| {
        let ck =
            vgg::net::checkpoint::Checkpoint::load(&d.join(run).join("last.safetensors")).unwrap();
        ck.state.unwrap()["step"].as_u64().unwrap()
    };
    assert_eq!(step("auto"), step("one"));
    for bad in ["0", "two"] {
        let o = vgg(&["train", "p.toml", "--out", "bad", "--replicas", bad], d);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(stderr(&o).contains("or auto"), "{}", text(&o));
        assert!(!d.join("bad").exists());
    }
    // A count that cannot split the batch of 2: refused before the run folder is made.
    for bad in ["3", "18446744073709551615"] {
        let o = vgg(&["train", "p.toml", "--out", "bad", "--replicas", bad], d);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            stderr(&o).contains("a batch of 2 images does not split into"),
            "{}",
            text(&o)
        );
        assert!(!d.join("bad").exists());
    }
}

/// A run saved on one replica, resumed under `--replicas auto` (which gives this network two),
/// continues on one and says so: the bits of the run that went straight through on one.
#[test]
fn a_resumed_run_keeps_its_replica_count_under_auto() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    toy(d);
    let run = |args: &[&str]| {
        let mut all = vec!["train", "p.toml"];
        all.extend_from_slice(args);
        let o = vgg(&all, d);
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    run(&[
        "--out",
        "straight",
        "--replicas",
        "1",
        "--epochs",
        "2",
        "-q",
    ]);
    run(&["--out", "resumed", "--replicas", "1", "--epochs", "1", "-q"]);
    let out = run(&["--out", "resumed", "--resume", "--epochs", "2"]);
    assert!(
        out.contains("continues on the 1 CPU replica(s) it ran on"),
        "{out}"
    );
    assert!(!out.contains("note: 2 CPU replicas"), "{out}");
    let load = |r: &str| {
        vgg::net::checkpoint::Checkpoint::load(&d.join(r).join("last.safetensors")).unwrap()
    };
    let (a, b) = (load("straight"), load("resumed"));
    assert_eq!(a.state.as_ref().unwrap()["replicas"], 1);
    for (x, y) in a.params.iter().zip(&b.params) {
        assert!(x.data == y.data, "{} differs", x.name);
    }
}
