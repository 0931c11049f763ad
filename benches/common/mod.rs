//! What the benchmarks share: where their photos come from, and a dataset over them.

use std::path::{Path, PathBuf};

/// The class-folder tree to measure on, and a description of it: `VGG_BENCH_DATA` when set,
/// else the real ImageNet photos in `../shared/data/imagenet-sample-500` when present, else a
/// generated synthetic set of photo-like sizes (written under `work`).
pub fn photos(work: &Path) -> (PathBuf, String) {
    if let Some(d) = std::env::var_os("VGG_BENCH_DATA") {
        return (PathBuf::from(d), "VGG_BENCH_DATA".into());
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/imagenet-sample-500");
    if shared.join("train").is_dir() {
        return (shared, "imagenet-sample-500 (real ImageNet photos)".into());
    }
    let root = work.join("synthetic");
    let spec = vgg::data::source::synthetic::SyntheticSpec {
        classes: 10,
        train_per_class: 50,
        val_per_class: 1,
        min_short_side: 300,
        max_short_side: 500,
        ..Default::default()
    };
    vgg::data::source::synthetic::generate(&spec, &root).expect("generate the synthetic bench set");
    (
        root,
        "synthetic-shapes (generated; ../shared/data not found)".into(),
    )
}

/// A `folder` dataset named `name` over `root`, its shards in `work/shards-NAME`, with the store
/// table `store` (TOML lines).
pub fn folder_dataset(
    work: &Path,
    root: &Path,
    name: &str,
    store: &str,
) -> vgg::config::registry::DatasetSpec {
    let reg_path = work.join(format!("{name}.toml"));
    std::fs::write(
        &reg_path,
        format!(
            "[datasets.{name}]\nsource = \"folder\"\nroot = \"{}\"\nshards = \"{}\"\n[datasets.{name}.store]\n{store}\n",
            root.display(),
            work.join(format!("shards-{name}")).display()
        ),
    )
    .expect("write the bench registry");
    let reg =
        vgg::config::registry::Registry::load(&reg_path).expect("the bench registry is valid");
    reg.get(name).expect("just written").clone()
}
