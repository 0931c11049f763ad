//! ImageNet's three validation label forms must give the same labels.

use vgg::data::prepare::PrepareOptions;
use vgg::data::source::{self, Split};
use vgg::data::store::PreparedSplit;

use crate::fixtures::{self, ValForm, CLASSES};
use crate::prepare::run;

fn labels(form: ValForm) -> Vec<(String, u32)> {
    let fx = fixtures::imagenet(1, form);
    let spec = fx.spec(&fx.dir.path().join("shards"), "records_per_shard = 4\n");
    let listing = source::list(&spec, Split::Val).unwrap();
    assert!(listing.skipped.is_empty(), "{:?}", listing.skipped);
    // The labels must be the sorted-wnid class indices the fixture intended.
    for f in &listing.files {
        let stem = f.key.rsplit('/').next().unwrap().trim_end_matches(".JPEG");
        let wnid = &fx.val.iter().find(|(s, _)| s == stem).unwrap().1;
        assert_eq!(CLASSES[f.label as usize], wnid, "{form:?}: {}", f.key);
    }
    // And they survive into the shards.
    let opts = PrepareOptions {
        splits: vec![Split::Val],
        ..Default::default()
    };
    run(&spec, &opts);
    let split = PreparedSplit::open(&fx.dir.path().join("shards/val")).unwrap();
    let mut out: Vec<(String, u32)> = split
        .shards
        .iter()
        .flat_map(|s| (0..s.len()).map(move |i| s.record(i).unwrap()))
        .map(|r| (r.key.rsplit('/').next().unwrap().to_string(), r.label))
        .collect();
    out.sort();
    out
}

#[test]
fn the_three_val_label_forms_agree() {
    let folders = labels(ValForm::ClassFolders);
    assert_eq!(folders.len(), 6);
    assert_eq!(labels(ValForm::Kaggle), folders);
    assert_eq!(labels(ValForm::Devkit), folders);
}

#[test]
fn devkit_ground_truth_without_meta_is_explained() {
    let fx = fixtures::imagenet(1, ValForm::Devkit);
    std::fs::remove_file(fx.root.join("ILSVRC2012_devkit_t12/data/meta.mat")).unwrap();
    let spec = fx.spec(&fx.dir.path().join("shards"), "");
    let e = source::list(&spec, Split::Val).unwrap_err().to_string();
    assert!(e.contains("meta.mat") && e.contains("own order"), "{e}");
}
