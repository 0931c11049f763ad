//! `vgg prepare` through the library: what is stored, what is skipped, resume, parts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use vgg::data::manifest::Manifest;
use vgg::data::prepare::{prepare, Part, PrepareError, PrepareOptions};
use vgg::data::shard::{Encoding, RecordFlags, ShardReader};
use vgg::data::source::Split;
use vgg::data::store::{self, PreparedSplit, StoreError};
use vgg::util::progress::{Cancel, Progress, Silent};

use crate::fixtures::{self, tree, ValForm};

/// Prepares without progress output or interruption.
pub fn run(
    spec: &vgg::config::registry::DatasetSpec,
    opts: &PrepareOptions,
) -> Vec<vgg::data::prepare::SplitReport> {
    prepare(spec, opts, &Silent, &Cancel::new()).unwrap()
}

const STORE: &str = "max_shortest_side = 96\nrecords_per_shard = 4\n";

fn train_only() -> PrepareOptions {
    PrepareOptions {
        splits: vec![Split::Train],
        ..Default::default()
    }
}

#[test]
fn stores_every_good_file_and_reports_every_bad_one() {
    let fx = fixtures::imagenet(4, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shards");
    let spec = fx.spec(&shards, STORE);
    let never = Cancel::new();
    let reports = prepare(&spec, &PrepareOptions::default(), &Silent, &never).unwrap();
    assert_eq!(reports.len(), 2, "train and val");
    let train = PreparedSplit::open(&shards.join("train")).unwrap();
    let m = &train.manifest;
    assert_eq!(m.records as usize, fx.good_train.len());
    assert_eq!(m.skipped as usize, fx.bad_train.len());
    assert_eq!(m.classes.len(), 3);
    assert_eq!(m.classes[0].records, 4 + 3);
    assert_eq!(
        m.shards.len(),
        (fx.good_train.len() + fx.bad_train.len()).div_ceil(4)
    );
    assert_eq!(
        (
            m.conversions.png,
            m.conversions.cmyk,
            m.conversions.grayscale
        ),
        (1, 1, 1)
    );

    // Every bad file is in the report with its reason kind.
    let report = std::fs::read_to_string(shards.join("train/skipped.tsv")).unwrap();
    for (key, kind) in &fx.bad_train {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("{key}\t")))
            .unwrap_or_else(|| panic!("{key} missing from skipped.tsv:\n{report}"));
        assert!(line.contains(&format!("\t{kind}:")), "{line}");
    }

    // Every good file is stored once, in key order, with its label, within the cap, and decodes.
    let by_key: HashMap<String, u32> = fx.good_train.iter().cloned().collect();
    let mut seen = Vec::new();
    for shard in &train.shards {
        for rec in shard.records() {
            let rec = rec.unwrap();
            assert_eq!(by_key[rec.key], rec.label, "{}", rec.key);
            seen.push(rec.key.to_string());
            let d = vgg::data::imaging::decode_rgb8(rec.bytes, u64::MAX).unwrap();
            assert_eq!((d.width, d.height), (rec.width, rec.height));
            assert!(rec.width.min(rec.height) <= 96, "{} not capped", rec.key);
            let source = std::fs::read(fx.root.join("train").join(rec.key)).unwrap();
            let src = vgg::data::imaging::decode_rgb8(&source, u64::MAX).unwrap();
            if src.width.min(src.height) > 96 {
                assert!(rec.flags.has(RecordFlags::RESIZED));
                assert_eq!(rec.width.min(rec.height), 96);
                let ratio = |a: u32, b: u32| a as f64 / b as f64;
                assert!((ratio(rec.width, rec.height) - ratio(src.width, src.height)).abs() < 0.02);
            } else if rec.key.ends_with("cmyk.JPEG") || rec.key.ends_with("png_named_jpeg.JPEG") {
                assert!(!rec.flags.has(RecordFlags::PASSTHROUGH));
                assert_eq!(
                    vgg::data::imaging::jpeg_header(rec.bytes)
                        .unwrap()
                        .components,
                    3
                );
            } else {
                // Already a JPEG within the cap: the original bytes, untouched.
                assert!(rec.flags.has(RecordFlags::PASSTHROUGH), "{}", rec.key);
                assert_eq!(rec.bytes, &source[..]);
            }
        }
    }
    let mut want: Vec<String> = fx.good_train.iter().map(|(k, _)| k.clone()).collect();
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn cmyk_is_converted_to_the_right_colour() {
    let fx = fixtures::imagenet(1, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shards");
    run(&fx.spec(&shards, STORE), &train_only());
    let split = PreparedSplit::open(&shards.join("train")).unwrap();
    let rec = split
        .shards
        .iter()
        .flat_map(|s| (0..s.len()).map(move |i| s.record(i).unwrap()))
        .find(|r| r.key.ends_with("cmyk.JPEG"))
        .unwrap();
    assert!(rec.flags.has(RecordFlags::CMYK_SOURCE));
    let d = vgg::data::imaging::decode_rgb8(rec.bytes, u64::MAX).unwrap();
    let centre = ((d.height / 2 * d.width + d.width / 2) * 3) as usize;
    let px = &d.rgb[centre..centre + 3];
    // C=0 M=1 Y=1 K=0 is red.
    assert!(
        px[0] > 200 && px[1] < 60 && px[2] < 60,
        "CMYK red decoded as {px:?}"
    );
}

#[test]
fn raw_encoding_stores_decoded_pixels() {
    let fx = fixtures::imagenet(2, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shards");
    let spec = fx.spec(
        &shards,
        "max_shortest_side = 64\nencoding = \"raw\"\nrecords_per_shard = 50\n",
    );
    run(&spec, &train_only());
    let split = PreparedSplit::open(&shards.join("train")).unwrap();
    assert_eq!(split.len() as usize, fx.good_train.len());
    for rec in split.shards[0].records() {
        let rec = rec.unwrap();
        assert_eq!(rec.encoding, Encoding::Raw);
        assert_eq!(
            rec.bytes.len() as u64,
            rec.width as u64 * rec.height as u64 * 3
        );
    }
    assert!(store::verify(&shards, None, &Silent, &Cancel::new())
        .unwrap()
        .ok());
}

/// Sets the cancel flag after `after` source files, as Ctrl-C would.
struct CancelAfter<'a> {
    after: u64,
    seen: AtomicU64,
    flag: &'a Cancel,
}

impl Progress for CancelAfter<'_> {
    fn advance(&self, n: u64) {
        if self.seen.fetch_add(n, Ordering::SeqCst) + n >= self.after {
            self.flag.cancel();
        }
    }
}

#[test]
fn interrupted_run_resumes_to_the_uninterrupted_result() {
    let fx = fixtures::imagenet(6, ValForm::ClassFolders);
    let store = "max_shortest_side = 96\nrecords_per_shard = 3\n";
    let clean = fx.dir.path().join("clean");
    run(&fx.spec(&clean, store), &train_only());

    let resumed = fx.dir.path().join("resumed");
    let spec = fx.spec(&resumed, store);
    let flag = Cancel::new();
    let cancel = CancelAfter {
        after: 7,
        seen: AtomicU64::new(0),
        flag: &flag,
    };
    match prepare(&spec, &train_only(), &cancel, &flag) {
        Err(PrepareError::Interrupted { written, .. }) => assert!(written >= 2, "{written}"),
        other => panic!("expected an interruption, got {other:?}"),
    }
    let dir = resumed.join("train");
    assert!(
        !dir.join("manifest.json").exists(),
        "no manifest for an incomplete split"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".tmp")),
        "temporary left behind: {names:?}"
    );
    // A crash would also leave debris: a half-written temporary and a torn shard file.
    std::fs::write(dir.join(".train-00004.vggshard.tmp"), b"partial").unwrap();
    let torn = std::fs::read(clean.join("train/train-00003.vggshard")).unwrap();
    std::fs::write(dir.join("train-00003.vggshard"), &torn[..torn.len() / 2]).unwrap();
    let kept_before = names.iter().filter(|n| n.ends_with(".vggshard")).count();

    let reports = run(&spec, &train_only());
    assert_eq!(reports[0].shards_kept, kept_before);
    assert!(reports[0].manifest.is_some());
    assert_eq!(
        tree(&clean),
        tree(&resumed),
        "resumed output differs from a clean run"
    );
}

#[test]
fn parts_union_equals_a_single_machine_run() {
    let fx = fixtures::imagenet(5, ValForm::Kaggle);
    let store = "max_shortest_side = 96\nrecords_per_shard = 2\n";
    let whole = fx.dir.path().join("whole");
    run(&fx.spec(&whole, store), &PrepareOptions::default());

    let parts = fx.dir.path().join("parts");
    let spec = fx.spec(&parts, store);
    let n = 3;
    for i in [2, 0, 1] {
        let opts = PrepareOptions {
            part: Some(Part { index: i, count: n }),
            ..Default::default()
        };
        let reports = run(&spec, &opts);
        // Parts write disjoint blocks; only once all are in can a manifest exist.
        let last = i == 1;
        assert_eq!(reports[0].manifest.is_some(), last, "part {i}");
    }
    // The explicit merge step gives the same manifest again.
    let merge = PrepareOptions {
        merge: true,
        ..Default::default()
    };
    run(&spec, &merge);
    assert_eq!(tree(&whole), tree(&parts));
    let m = Manifest::read(&parts.join("train")).unwrap();
    assert_eq!(m.records as usize, fx.good_train.len());
}

#[test]
fn merge_refuses_while_parts_are_missing() {
    let fx = fixtures::imagenet(5, ValForm::ClassFolders);
    let store = "max_shortest_side = 96\nrecords_per_shard = 2\n";
    let parts = fx.dir.path().join("parts");
    let spec = fx.spec(&parts, store);
    let one = PrepareOptions {
        part: Some(Part { index: 0, count: 4 }),
        splits: vec![Split::Train],
        ..Default::default()
    };
    run(&spec, &one);
    let merge = PrepareOptions {
        merge: true,
        splits: vec![Split::Train],
        ..Default::default()
    };
    let e = prepare(&spec, &merge, &Silent, &Cancel::new()).unwrap_err();
    assert!(matches!(e, PrepareError::Incomplete { .. }), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn a_changed_policy_rewrites_instead_of_keeping_stale_shards() {
    let fx = fixtures::imagenet(3, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shards");
    run(&fx.spec(&shards, STORE), &train_only());
    let spec = fx.spec(&shards, "max_shortest_side = 64\nrecords_per_shard = 4\n");
    let r = run(&spec, &train_only());
    assert_eq!(r[0].shards_kept, 0);
    let split = PreparedSplit::open(&shards.join("train")).unwrap();
    for s in &split.shards {
        for rec in s.records() {
            let rec = rec.unwrap();
            assert!(rec.width.min(rec.height) <= 64);
        }
    }
    let _ = ShardReader::open(&shards.join("train/train-00000.vggshard")).unwrap();
}

#[test]
fn unwritable_output_is_a_clear_error_and_leaves_nothing() {
    let fx = fixtures::imagenet(1, ValForm::ClassFolders);
    let blocker = fx.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file where the shard directory should go").unwrap();
    let spec = fx.spec(&blocker.join("shards"), STORE);
    let e = prepare(&spec, &train_only(), &Silent, &Cancel::new()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("not-a-dir"), "{msg}");
    assert_eq!(
        std::fs::read(&blocker).unwrap(),
        b"a file where the shard directory should go"
    );
}

/// Disk full: prepare into a tiny tmpfs. Needs root (mount); reports and passes trivially
/// only where mounting is impossible, saying so.
#[test]
fn disk_full_is_a_clear_error_with_no_half_written_shard() {
    let fx = fixtures::imagenet(6, ValForm::ClassFolders);
    let mnt = fx.dir.path().join("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED disk_full test: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let spec = fx.spec(
        &mnt.join("shards"),
        "max_shortest_side = 512\nencoding = \"raw\"\nrecords_per_shard = 2\n",
    );
    let e = prepare(&spec, &train_only(), &Silent, &Cancel::new()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("disk is full"), "{msg}");
    let dir = mnt.join("shards/train");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary left behind: {name}");
        ShardReader::open(&p).expect("every shard left on disk is complete");
    }
}

#[test]
fn a_damaged_record_is_redone_by_prepare_to_the_clean_result() {
    let fx = fixtures::imagenet(3, ValForm::ClassFolders);
    let clean = fx.dir.path().join("clean");
    run(&fx.spec(&clean, STORE), &train_only());
    let damaged = fx.dir.path().join("damaged");
    let spec = fx.spec(&damaged, STORE);
    run(&spec, &train_only());
    let key = crate::loader::flip_payload_byte(&damaged.join("train/train-00001.vggshard"), 1);
    let split = PreparedSplit::open(&damaged.join("train")).unwrap();
    let e = split
        .record(split.shards[0].len() as u64 + 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-00001.vggshard") && e.contains("record 1") && e.contains(&key),
        "{e}"
    );
    drop(split);
    let r = run(&spec, &train_only());
    assert_eq!(r[0].shards_written, 1, "only the damaged shard is redone");
    assert_eq!(
        tree(&clean),
        tree(&damaged),
        "repaired store differs from a clean run"
    );
}

/// Rewrites `dir`'s manifest after `edit`, signed again (`resign`) or not.
fn edit_manifest(dir: &std::path::Path, resign: bool, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    let text = if resign {
        let m: Manifest = serde_json::from_value(v).unwrap();
        m.to_json()
    } else {
        serde_json::to_string_pretty(&v).unwrap()
    };
    std::fs::write(&path, text).unwrap();
}

/// The message `open` or, failing that, `verify` gives for the store in `dir`, if any.
fn refusal(dir: &std::path::Path) -> Option<String> {
    if let Err(e) = PreparedSplit::open(dir) {
        return Some(e.to_string());
    }
    match store::verify(dir, Some(1), &Silent, &Cancel::new()) {
        Err(e) => Some(e.to_string()),
        Ok(r) if !r.ok() => Some(
            r.failures
                .iter()
                .map(|f| f.reason.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Ok(_) => None,
    }
}

#[test]
fn edited_manifests_are_refused_and_an_untouched_one_passes() {
    let fx = fixtures::imagenet(3, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shards");
    run(&fx.spec(&shards, STORE), &train_only());
    let dir = shards.join("train");
    assert_eq!(refusal(&dir), None, "an untouched store opens and verifies");
    let original = std::fs::read(dir.join("manifest.json")).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit, &str); 4] = [
        (
            "a shard entry removed",
            |v| {
                v["shards"].as_array_mut().unwrap().remove(1);
            },
            "the shards listed hold",
        ),
        (
            "counts edited",
            |v| {
                let n = v["records"].as_u64().unwrap();
                v["records"] = (n + 1).into();
                let c = v["classes"][0]["records"].as_u64().unwrap();
                v["classes"][0]["records"] = (c + 1).into();
            },
            "the shards listed hold",
        ),
        (
            "class ids swapped",
            |v| {
                let classes = v["classes"].as_array_mut().unwrap();
                let (a, b) = (classes[0].clone(), classes[1].clone());
                for (slot, from) in [(0, &b), (1, &a)] {
                    for field in ["wnid", "name", "records"] {
                        classes[slot][field] = from[field].clone();
                    }
                }
            },
            "which the manifest says is class",
        ),
        (
            "store.encoding changed",
            |v| v["store"]["encoding"] = "raw".into(),
            "store policy says",
        ),
    ];
    for (what, edit, signed_message) in edits {
        // As edited by hand: the manifest's own checksum refuses it.
        std::fs::write(dir.join("manifest.json"), &original).unwrap();
        edit_manifest(&dir, false, edit);
        let e = PreparedSplit::open(&dir).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("manifest checksum mismatch")),
            "{what}: {e:?}"
        );
        // Signed again: the shards contradict it.
        std::fs::write(dir.join("manifest.json"), &original).unwrap();
        edit_manifest(&dir, true, edit);
        let e = refusal(&dir);
        assert!(
            e.as_deref().is_some_and(|e| e.contains(signed_message)),
            "{what} (signed again): {e:?}"
        );
    }
    std::fs::write(dir.join("manifest.json"), &original).unwrap();
    assert_eq!(refusal(&dir), None);
}

#[test]
fn a_shard_replaced_by_another_valid_one_is_refused_at_open() {
    let fx = fixtures::imagenet(3, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shards");
    run(&fx.spec(&shards, STORE), &train_only());
    let other = fx.dir.path().join("other");
    run(
        &fx.spec(&other, "max_shortest_side = 64\nrecords_per_shard = 4\n"),
        &train_only(),
    );
    let file = "train/train-00000.vggshard";
    std::fs::copy(other.join(file), shards.join(file)).unwrap();
    let e = PreparedSplit::open(&shards.join("train"))
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("train-00000.vggshard")
                && (e.contains("header CRC") || e.contains("bytes, the manifest says"))),
        "{e:?}"
    );
}

#[test]
fn a_manifest_of_the_previous_format_is_refused_with_the_command_to_run() {
    let fx = fixtures::imagenet(1, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shards");
    run(&fx.spec(&shards, STORE), &train_only());
    let dir = shards.join("train");
    edit_manifest(&dir, false, |v| {
        v["format_version"] = 1.into();
        v.as_object_mut().unwrap().remove("checksum");
    });
    let e = PreparedSplit::open(&dir).err().unwrap().to_string();
    assert!(e.contains("version 1") && e.contains("vgg prepare"), "{e}");
}

#[test]
fn two_datasets_sharing_a_shard_folder_are_refused() {
    let fx = fixtures::imagenet(2, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shared");
    let reg_a = fx.registry("alpha", &shards, STORE);
    let reg_b = fx.registry("beta", &shards, STORE);
    let (a, b) = (reg_a.get("alpha").unwrap(), reg_b.get("beta").unwrap());
    run(a, &train_only());
    let before = tree(&shards);
    let e = prepare(b, &train_only(), &Silent, &Cancel::new()).unwrap_err();
    assert!(
        matches!(e, PrepareError::Store(StoreError::OtherDataset { .. })),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("`alpha`") && msg.contains("`beta`"), "{msg}");
    assert_eq!(
        before,
        tree(&shards),
        "the other dataset's store was touched"
    );
    // Readers naming a dataset refuse another's store.
    let split = PreparedSplit::open(&shards.join("train")).unwrap();
    split.check_dataset(a).unwrap();
    let e = split.check_dataset(b).unwrap_err().to_string();
    assert!(e.contains("`alpha`") && e.contains("`beta`"), "{e}");
}

#[test]
fn an_unfinished_store_of_another_dataset_is_refused() {
    let fx = fixtures::imagenet(4, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shared");
    let reg_a = fx.registry("alpha", &shards, STORE);
    let reg_b = fx.registry("beta", &shards, STORE);
    let flag = Cancel::new();
    let cancel = CancelAfter {
        after: 5,
        seen: AtomicU64::new(0),
        flag: &flag,
    };
    let e = prepare(reg_a.get("alpha").unwrap(), &train_only(), &cancel, &flag).unwrap_err();
    assert!(matches!(e, PrepareError::Interrupted { .. }), "{e}");
    let e = prepare(
        reg_b.get("beta").unwrap(),
        &train_only(),
        &Silent,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(
        matches!(e, PrepareError::Store(StoreError::OtherDataset { .. })),
        "{e}"
    );
}

#[test]
fn an_interrupted_re_prepare_leaves_the_old_store_whole_and_resumes_the_new_one() {
    let fx = fixtures::imagenet(6, ValForm::ClassFolders);
    let new_policy = "max_shortest_side = 64\nrecords_per_shard = 3\n";
    let clean = fx.dir.path().join("clean");
    run(&fx.spec(&clean, new_policy), &train_only());

    let shards = fx.dir.path().join("shards");
    run(&fx.spec(&shards, STORE), &train_only());
    let old = tree(&shards.join("train"));
    let spec = fx.spec(&shards, new_policy);
    let flag = Cancel::new();
    let cancel = CancelAfter {
        after: 7,
        seen: AtomicU64::new(0),
        flag: &flag,
    };
    match prepare(&spec, &train_only(), &cancel, &flag) {
        Err(PrepareError::Interrupted { written, .. }) => assert!(written >= 2, "{written}"),
        other => panic!("expected an interruption, got {other:?}"),
    }
    // Readers still see the old store, whole.
    assert_eq!(
        old,
        tree(&shards.join("train")),
        "the old store was changed"
    );
    let split = PreparedSplit::open(&shards.join("train")).unwrap();
    assert!(split.manifest.store.max_shortest_side.0 == 96);
    drop(split);
    assert!(
        store::verify(&shards.join("train"), None, &Silent, &Cancel::new())
            .unwrap()
            .ok()
    );
    // The re-run keeps what the interrupted one wrote and swaps the new store in whole.
    let r = run(&spec, &train_only());
    assert!(r[0].shards_kept >= 2, "{:?}", r[0]);
    assert_eq!(
        tree(&clean),
        tree(&shards),
        "resumed replacement differs from a clean run"
    );
}
