//! Generated datasets in ImageNet layout, with one file of each bad kind ImageNet is known for.

use std::path::{Path, PathBuf};

use vgg::config::registry::{DatasetSpec, Registry};
use vgg::data::imaging::encode_jpeg;
// What the MAT writer below takes from its parent module (`super::`).
use vgg::data::source::devkit::{mat_types, DevkitSynset};

/// The library's MAT v5 fixture writer, which it compiles only for its own unit tests, built
/// into this test binary from the same file.
#[allow(dead_code)] // this binary writes only a default meta.mat
#[path = "../../src/data/source/devkit/mat_writer.rs"]
mod mat_writer;

pub const CLASSES: [&str; 3] = ["n01440764", "n02102040", "n02979186"];

/// A smooth, class-dependent test picture.
pub fn picture(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            v.push(((x * 255 / w.max(1)) as u8).wrapping_add(seed.wrapping_mul(40) as u8));
            v.push((y * 255 / h.max(1)) as u8);
            v.push(((x + y + seed * 17) % 256) as u8);
        }
    }
    v
}

pub fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    encode_jpeg(&picture(w, h, seed), w, h, 90).unwrap()
}

/// A solid-colour CMYK JPEG (Adobe-style, as in ImageNet's 22 CMYK files).
pub fn cmyk_jpeg(w: u16, h: u16, cmyk: [u8; 4]) -> Vec<u8> {
    let data: Vec<u8> = (0..w as usize * h as usize).flat_map(|_| cmyk).collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(&data, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    out
}

pub fn gray_jpeg(w: u16, h: u16) -> Vec<u8> {
    let data: Vec<u8> = (0..w as usize * h as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&data, w, h, jpeg_encoder::ColorType::Luma)
        .unwrap();
    out
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_raw(w, h, picture(w, h, 9)).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A valid small JPEG whose frame header claims 65000 x 65000 pixels.
pub fn bomb_jpeg() -> Vec<u8> {
    let mut b = jpeg(16, 16, 1);
    let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    b[sof + 5..sof + 7].copy_from_slice(&65000u16.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&65000u16.to_be_bytes());
    b
}

/// What the fixture holds.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    /// Good train files (key -> label).
    pub good_train: Vec<(String, u32)>,
    /// Bad train files that must be skipped (key, reason kind).
    pub bad_train: Vec<(String, &'static str)>,
    /// Val images (file stem -> wnid), all good.
    pub val: Vec<(String, String)>,
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Val layouts ImageNet is distributed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValForm {
    ClassFolders,
    Kaggle,
    Devkit,
}

/// Builds an ImageNet-layout tree: `per_class` good JPEGs per class of varied sizes (some above
/// a 96-pixel cap), the odd-but-valid files (PNG named .JPEG, CMYK, grayscale) and the bad ones.
pub fn imagenet(per_class: u32, val_form: ValForm) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ILSVRC2012");
    let mut good_train = Vec::new();
    for (c, wnid) in CLASSES.iter().enumerate() {
        for i in 0..per_class {
            let (w, h) =
                [(120, 90), (64, 80), (200, 150), (90, 160), (70, 70)][(i as usize + c) % 5];
            let key = format!("{wnid}/{wnid}_{i}.JPEG");
            write(
                &root.join("train").join(&key),
                &jpeg(w, h, c as u32 * 100 + i),
            );
            good_train.push((key, c as u32));
        }
    }
    let odd = [
        ("png_named_jpeg.JPEG", png(100, 60)),
        ("cmyk.JPEG", cmyk_jpeg(48, 40, [0, 255, 255, 0])),
        ("gray.JPEG", gray_jpeg(50, 40)),
    ];
    for (name, bytes) in &odd {
        let key = format!("{}/{name}", CLASSES[0]);
        write(&root.join("train").join(&key), bytes);
        good_train.push((key, 0));
    }
    good_train.sort();
    let full = jpeg(80, 60, 5);
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.JPEG",
            full[..full.len() * 2 / 3].to_vec(),
            "truncated",
        ),
        ("empty.JPEG", vec![], "empty"),
        (
            "notes.JPEG",
            b"this is not an image\n".to_vec(),
            "not-an-image",
        ),
        ("bomb.JPEG", bomb_jpeg(), "too-large"),
        (
            "garbage.JPEG",
            [&[0xFFu8, 0xD8, 0xFF, 0xE0, 0x00][..], &[7u8; 40][..]].concat(),
            "corrupt",
        ),
    ];
    let mut bad_train = Vec::new();
    for (name, bytes, kind) in bad {
        let key = format!("{}/{name}", CLASSES[1]);
        write(&root.join("train").join(&key), &bytes);
        bad_train.push((key, kind));
    }
    // Validation: 2 images per class, written in the requested form.
    let mut val = Vec::new();
    let mut n = 0;
    for (c, wnid) in CLASSES.iter().enumerate() {
        for _ in 0..2 {
            n += 1;
            val.push((format!("ILSVRC2012_val_{n:08}"), wnid.to_string(), c));
        }
    }
    // Shuffle the order relative to class so sorted-wnid order and file order differ.
    val.swap(0, 5);
    val.swap(1, 3);
    for (i, (stem, _, c)) in val.iter_mut().enumerate() {
        *stem = format!("ILSVRC2012_val_{:08}", i + 1);
        let bytes = jpeg(60 + i as u32 * 7, 50, 700 + *c as u32);
        let rel = match val_form {
            ValForm::ClassFolders => format!("{}/{stem}.JPEG", CLASSES[*c]),
            _ => format!("{stem}.JPEG"),
        };
        write(&root.join("val").join(rel), &bytes);
    }
    match val_form {
        ValForm::ClassFolders => {}
        ValForm::Kaggle => {
            let mut csv = String::from("ImageId,PredictionString\r\n");
            for (stem, wnid, _) in &val {
                csv.push_str(&format!("{stem},{wnid} 1 2 30 40 {wnid} 5 6 20 20\r\n"));
            }
            write(&root.join("LOC_val_solution.csv"), csv.as_bytes());
        }
        ValForm::Devkit => {
            // The devkit numbers classes in its own order: here the reverse of sorted wnids,
            // plus the rest of the 1000 ids on unrelated wnids.
            let mut synsets: Vec<DevkitSynset> = CLASSES
                .iter()
                .rev()
                .enumerate()
                .map(|(i, w)| DevkitSynset {
                    ilsvrc2012_id: i as u32 + 1,
                    wnid: w.to_string(),
                    words: format!("class {w}"),
                })
                .collect();
            for id in 4..=1000u32 {
                synsets.push(DevkitSynset {
                    ilsvrc2012_id: id,
                    wnid: format!("n{:08}", 90_000_000 + id),
                    words: format!("filler {id}"),
                });
            }
            let data = root.join("ILSVRC2012_devkit_t12/data");
            write(
                &data.join("meta.mat"),
                &mat_writer::write_synsets_mat(&synsets),
            );
            let gt: String = val
                .iter()
                .map(|(_, _, c)| format!("{}\n", CLASSES.len() - c))
                .collect();
            write(
                &data.join("ILSVRC2012_validation_ground_truth.txt"),
                gt.as_bytes(),
            );
        }
    }
    let val = val.into_iter().map(|(s, w, _)| (s, w)).collect();
    Fixture {
        dir,
        root,
        good_train,
        bad_train,
        val,
    }
}

impl Fixture {
    /// A registry text for this fixture with the given store table body.
    pub fn registry(&self, name: &str, shards: &Path, store: &str) -> Registry {
        let text = format!(
            "[datasets.{name}]\nsource = \"imagenet\"\nroot = \"{}\"\nshards = \"{}\"\n[datasets.{name}.store]\n{store}\n",
            self.root.display(),
            shards.display()
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, &text).unwrap();
        Registry::load(&path).unwrap()
    }

    pub fn spec(&self, shards: &Path, store: &str) -> DatasetSpec {
        self.registry("fixture", shards, store)
            .get("fixture")
            .unwrap()
            .clone()
    }
}

/// Every file under `dir`, relative path -> bytes, sorted.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}
