//! `vgg eval`'s runner (`vgg::eval::run`) through ONNX Runtime, on a tiny network and a small
//! prepared dataset of images of several sizes and aspect ratios: every protocol against the
//! same numbers computed by hand (one view at a time through the graphs), and the equal-weight
//! averaging over flips, scales, protocols and networks, batching by size, limits and errors.

use std::collections::HashMap;

use vgg::config::model::{parameters, ParamKind};
use vgg::config::model::{Conv, VggConfig};
use vgg::data::augment::{
    decode_record, eval_sample, rescale_whole, with_record, EvalTransform, Output, VGG_MEAN,
};
use vgg::data::prepare::PrepareOptions;
use vgg::data::source::Split;
use vgg::data::store::PreparedSplit;
use vgg::eval::protocol::{centre_crop, crop_grid, Protocol};
use vgg::eval::run::{evaluate, posteriors, EvalError, EvalSettings, Network, Posteriors};
use vgg::net::checkpoint::{Checkpoint, NamedTensor};
use vgg::net::graph::vgg as graphs;
use vgg::net::session::{self, SessionSettings};
use vgg::util::progress::{Cancel, Progress, Silent};
use vgg::util::rng::{Rng, Stream};

use crate::fixtures::{self, ValForm};
use crate::gradients::{run, T};

const INPUT: u32 = 16;
const CLASSES: u32 = 3;
const TOL: f32 = 2e-6;

/// A prepared train split of 18 images (3 classes): 70x70, 120x90, 200x150, 64x80, 90x160 per
/// class, plus a 100x60 PNG, a 48x40 CMYK and a 50x40 grayscale JPEG.
struct Data {
    _fixture: fixtures::Fixture,
    split: PreparedSplit,
}

fn data() -> Data {
    let fx = fixtures::imagenet(5, ValForm::ClassFolders);
    let shards = fx.dir.path().join("shards");
    let spec = fx.spec(&shards, "max_shortest_side = 96\nrecords_per_shard = 4\n");
    crate::prepare::run(
        &spec,
        &PrepareOptions {
            splits: vec![Split::Train],
            ..Default::default()
        },
    );
    let split = PreparedSplit::open(&shards.join("train")).unwrap();
    assert_eq!(split.len(), 18);
    Data {
        _fixture: fx,
        split,
    }
}

/// Two blocks (conv3-4, conv3-8), FC 16, 3 classes, 16x16 input.
fn config() -> VggConfig {
    let c = |kernel, channels| Conv { kernel, channels };
    VggConfig {
        name: "tiny".into(),
        blocks: vec![vec![c(3, 4)], vec![c(3, 8)]],
        lrn: None,
        fc: 16,
        classes: CLASSES,
        input: INPUT,
        in_channels: 3,
    }
}

/// Glorot-uniform weights (the first layer scaled down for 0-255 pixels), small biases.
fn network(name: &str, seed: u64) -> Network {
    let config = config();
    let params = parameters(&config)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut rng = Rng::new(seed, Stream::Init, 0, i as u64);
            let mut a = (6.0 / (p.fan_in + p.fan_out) as f64).sqrt();
            if p.kind == ParamKind::Bias {
                a = 0.1;
            } else if i == 0 {
                a /= 30.0;
            }
            NamedTensor {
                name: p.name.clone(),
                shape: p.shape.iter().map(|&d| d as usize).collect(),
                data: (0..p.numel()).map(|_| rng.uniform(-a, a) as f32).collect(),
            }
        })
        .collect();
    Network {
        name: name.into(),
        config,
        params,
    }
}

fn settings(protocol: Protocol, scales: &[u32], flip: bool) -> EvalSettings {
    EvalSettings {
        protocol,
        scales: scales.to_vec(),
        flip,
        grid: 3,
        mean: VGG_MEAN,
        limit: None,
        sample_seed: vgg::eval::run::SAMPLE_SEED,
        session: SessionSettings {
            threads: 1,
            ..Default::default()
        },
        batch: 64,
    }
}

fn post(split: &PreparedSplit, nets: &[Network], s: &EvalSettings) -> Posteriors {
    posteriors(split, nets, s, &Silent, &Cancel::new()).unwrap()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= TOL, "{what}: {a:?} vs {b:?}");
    }
}

/// Records every `(done, total)` position an evaluation reports.
#[derive(Default)]
struct Calls(std::sync::Mutex<Vec<(u64, u64)>>);

impl Progress for Calls {
    fn start(&self, _label: &str, total: u64, done: u64) {
        self.0.lock().unwrap().push((done, total));
    }
    fn set_position(&self, done: u64) {
        let mut v = self.0.lock().unwrap();
        let total = v.last().map_or(0, |c| c.1);
        v.push((done, total));
    }
}

fn mean2(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| (x + y) / 2.0).collect()
}

/// Record `g` decoded and rescaled so its smallest side is `q`: `(w, h, rgb8)`.
fn rescaled(split: &PreparedSplit, g: u64, q: u32) -> (u32, u32, Vec<u8>) {
    let (w, h, rgb) = with_record(split, g, |rec, s| {
        let (w, h, px) = decode_record(rec, s)?;
        Ok((w, h, px.to_vec()))
    })
    .unwrap();
    rescale_whole(&rgb, w, h, q)
}

/// The `cw x ch` window at `(x0, y0)` of an RGB8 image of width `w`, optionally mirrored, as
/// float32 CHW minus the mean.
fn window(rgb: &[u8], w: u32, (x0, y0): (u32, u32), (cw, ch): (u32, u32), flip: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity((3 * cw * ch) as usize);
    for c in 0..3 {
        for y in 0..ch {
            for x in 0..cw {
                let sx = if flip { x0 + cw - 1 - x } else { x0 + x };
                let p = rgb[(((y0 + y) * w + sx) * 3 + c) as usize];
                out.push(p as f32 - VGG_MEAN[c as usize]);
            }
        }
    }
    out
}

/// One view at a time through a graph.
struct Graphs {
    params: Vec<T>,
    forward: ort::session::Session,
    dense: ort::session::Session,
}

impl Graphs {
    fn new(net: &Network) -> Self {
        let s = SessionSettings {
            threads: 1,
            ..Default::default()
        };
        Graphs {
            params: net
                .params
                .iter()
                .map(|t| {
                    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
                    T::new(&t.name, &shape, t.data.clone())
                })
                .collect(),
            forward: session::build(&graphs::forward_graph(&net.config), &s).unwrap(),
            dense: session::build(&graphs::dense_graph(&net.config), &s).unwrap(),
        }
    }

    fn prob(&mut self, dense: bool, image: Vec<f32>, (w, h): (u32, u32)) -> Vec<f32> {
        let mut inputs = self.params.clone();
        inputs.push(T::new("images", &[1, 3, h as i64, w as i64], image));
        let session = if dense {
            &mut self.dense
        } else {
            &mut self.forward
        };
        let out = run(session, &inputs, vec![]);
        out["probabilities"].clone()
    }

    /// Dense posterior of a whole rescaled image, averaged with its mirror if `flip`.
    fn dense(&mut self, (w, h, rgb): &(u32, u32, Vec<u8>), flip: bool) -> Vec<f32> {
        let a = self.prob(true, window(rgb, *w, (0, 0), (*w, *h), false), (*w, *h));
        if !flip {
            return a;
        }
        let b = self.prob(true, window(rgb, *w, (0, 0), (*w, *h), true), (*w, *h));
        mean2(&a, &b)
    }

    /// Mean forward posterior of `INPUT` crops at `origins` and their mirrors.
    fn crops(&mut self, (w, _, rgb): &(u32, u32, Vec<u8>), origins: &[(u32, u32)]) -> Vec<f32> {
        let mut sum = vec![0.0f64; CLASSES as usize];
        let mut n = 0.0;
        for &o in origins {
            for flip in [false, true] {
                let p = self.prob(
                    false,
                    window(rgb, *w, o, (INPUT, INPUT), flip),
                    (INPUT, INPUT),
                );
                for (s, v) in sum.iter_mut().zip(p) {
                    *s += f64::from(v);
                }
                n += 1.0;
            }
        }
        sum.into_iter().map(|s| (s / n) as f32).collect()
    }
}

#[test]
fn dense_on_a_training_sized_image_is_the_forward_graph() {
    let d = data();
    let net = network("a", 1);
    let p = post(
        &d.split,
        std::slice::from_ref(&net),
        &settings(Protocol::Dense, &[INPUT], false),
    );
    let mut g = Graphs::new(&net);
    let mut squares = 0;
    for i in 0..d.split.len() {
        let (w, h, rgb) = rescaled(&d.split, i, INPUT);
        if (w, h) != (INPUT, INPUT) {
            continue;
        }
        squares += 1;
        let want = g.prob(false, window(&rgb, w, (0, 0), (w, h), false), (w, h));
        close(&p.fused.mean(i as usize), &want, &format!("image {i}"));
        close(
            &p.per_network[0].mean(i as usize),
            &want,
            &format!("image {i}"),
        );
    }
    assert_eq!(squares, 3, "one 70x70 image per class");
    // The posteriors are informative (not uniform, not one-hot), so the comparisons bite.
    let m = p.fused.mean(0);
    assert!(m.iter().all(|&v| v > 0.01 && v < 0.99), "{m:?}");
    assert!((m.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(p.indices, (0..18).collect::<Vec<u64>>());
}

#[test]
fn flip_averages_the_image_and_its_mirror_for_every_size() {
    let d = data();
    let net = network("a", 2);
    let p = post(
        &d.split,
        std::slice::from_ref(&net),
        &settings(Protocol::Dense, &[INPUT], true),
    );
    let mut g = Graphs::new(&net);
    let mut differ = 0;
    for i in 0..d.split.len() {
        let img = rescaled(&d.split, i, INPUT);
        let want = g.dense(&img, true);
        close(
            &p.fused.mean(i as usize),
            &want,
            &format!("image {i} ({}x{})", img.0, img.1),
        );
        // The mirror really is another view (except for the solid-colour CMYK image).
        let plain = g.dense(&img, false);
        if plain.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-4) {
            differ += 1;
        }
    }
    assert!(differ >= 15, "{differ} images differ from their mirror");
}

#[test]
fn batching_by_size_equals_one_image_at_a_time() {
    let d = data();
    let nets = [network("a", 3)];
    // Several images share a rescaled size (so groups of more than one image are batched).
    let mut sizes: HashMap<(u32, u32), usize> = HashMap::new();
    for i in 0..d.split.len() {
        let (w, h, _) = rescaled(&d.split, i, 20);
        *sizes.entry((w, h)).or_default() += 1;
    }
    assert!(sizes.values().any(|&n| n >= 3), "{sizes:?}");
    assert!(sizes.len() >= 4, "{sizes:?}");
    for protocol in [Protocol::Dense, Protocol::MultiCrop] {
        let mut s = settings(protocol, &[20], true);
        let batched = post(&d.split, &nets, &s);
        s.batch = 1;
        let single = post(&d.split, &nets, &s);
        s.batch = 7;
        let odd = post(&d.split, &nets, &s);
        for i in 0..d.split.len() as usize {
            close(&batched.fused.mean(i), &single.fused.mean(i), "batched");
            close(&odd.fused.mean(i), &single.fused.mean(i), "batch 7");
        }
    }
}

#[test]
fn scales_are_averaged_with_equal_weight() {
    let d = data();
    let nets = [network("a", 4)];
    for protocol in [Protocol::Dense, Protocol::MultiCrop] {
        let both = post(&d.split, &nets, &settings(protocol, &[INPUT, 24], true));
        let a = post(&d.split, &nets, &settings(protocol, &[INPUT], true));
        let b = post(&d.split, &nets, &settings(protocol, &[24], true));
        let differ = (0..d.split.len() as usize)
            .filter(|&i| {
                let (x, y) = (a.fused.mean(i), b.fused.mean(i));
                x.iter().zip(&y).any(|(p, q)| (p - q).abs() > 1e-4)
            })
            .count();
        assert!(
            differ >= 15,
            "{protocol}: the two scales differ on {differ} images"
        );
        for i in 0..d.split.len() as usize {
            let want = mean2(&a.fused.mean(i), &b.fused.mean(i));
            close(&both.fused.mean(i), &want, &format!("{protocol} image {i}"));
        }
    }
}

#[test]
fn fusion_is_the_mean_of_the_networks() {
    let d = data();
    let (a, b) = (network("a", 5), network("b", 6));
    let s = settings(Protocol::Dense, &[INPUT, 20], true);
    let fused = post(&d.split, &[a.clone(), b.clone()], &s);
    let pa = post(&d.split, std::slice::from_ref(&a), &s);
    let pb = post(&d.split, std::slice::from_ref(&b), &s);
    for i in 0..d.split.len() as usize {
        let want = mean2(&pa.fused.mean(i), &pb.fused.mean(i));
        close(&fused.fused.mean(i), &want, "fused");
        close(&fused.per_network[0].mean(i), &pa.fused.mean(i), "net a");
        close(&fused.per_network[1].mean(i), &pb.fused.mean(i), "net b");
    }
    let report = evaluate(
        &d.split,
        &[a.clone(), b.clone()],
        &s,
        &Silent,
        &Cancel::new(),
    )
    .unwrap();
    let ra = evaluate(&d.split, &[a], &s, &Silent, &Cancel::new()).unwrap();
    let rb = evaluate(&d.split, &[b], &s, &Silent, &Cancel::new()).unwrap();
    assert_eq!(report.per_network.len(), 2);
    assert_eq!(report.per_network[0], ("a".to_string(), ra.fused));
    assert_eq!(report.per_network[1], ("b".to_string(), rb.fused));
    assert_eq!(report.fused.images, 18);
}

#[test]
fn multi_crop_and_centre_match_crops_run_one_by_one() {
    let d = data();
    let net = network("a", 7);
    let nets = std::slice::from_ref(&net);
    let q = 20;
    let multi = post(&d.split, nets, &settings(Protocol::MultiCrop, &[q], true));
    let centre = post(&d.split, nets, &settings(Protocol::Centre, &[q], true));
    let mut centre_s = settings(Protocol::Centre, &[q], false);
    centre_s.batch = 5;
    let centre_plain = post(&d.split, nets, &centre_s);
    let mut g = Graphs::new(&net);
    for i in 0..d.split.len() {
        let img = rescaled(&d.split, i, q);
        let grid = crop_grid(img.0, img.1, INPUT, 3);
        close(
            &multi.fused.mean(i as usize),
            &g.crops(&img, &grid),
            "multi-crop",
        );
        // The centre crop is the loader's, the one the trainer validates on.
        let plain = g.prob(false, loader_centre(&d.split, i, q, false), (INPUT, INPUT));
        let mirrored = g.prob(false, loader_centre(&d.split, i, q, true), (INPUT, INPUT));
        close(
            &centre.fused.mean(i as usize),
            &mean2(&plain, &mirrored),
            "centre",
        );
        close(
            &centre_plain.fused.mean(i as usize),
            &plain,
            "centre, no flip",
        );
        // And it is the centre window of the rescaled image, to the filter's rounding.
        let c = centre_crop(img.0, img.1, INPUT);
        let by_hand = window(&img.2, img.0, c, (INPUT, INPUT), false);
        let loader = loader_centre(&d.split, i, q, false);
        let worst = by_hand
            .iter()
            .zip(&loader)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1.0, "record {i}: {worst} levels apart");
    }
}

/// Record `g`'s centre crop at test scale `q` as the loader makes it in eval mode (float32
/// CHW minus the mean), mirrored left-right when `flip`.
fn loader_centre(split: &PreparedSplit, g: u64, q: u32, flip: bool) -> Vec<f32> {
    let t = EvalTransform {
        scale: q,
        crop: Some(INPUT),
        mean: VGG_MEAN,
    };
    let mut x = with_record(split, g, |rec, s| {
        let mut x = vec![0.0f32; (3 * INPUT * INPUT) as usize];
        eval_sample(rec, &t, s, Output::F32Chw(&mut x))?;
        Ok(x)
    })
    .unwrap();
    if flip {
        for row in x.chunks_exact_mut(INPUT as usize) {
            row.reverse();
        }
    }
    x
}

#[test]
fn dense_and_multi_crop_are_combined_with_equal_weight() {
    let d = data();
    let nets = [network("a", 8)];
    let scales = [INPUT, 24];
    let both = post(
        &d.split,
        &nets,
        &settings(Protocol::DenseMultiCrop, &scales, true),
    );
    let dense = post(&d.split, &nets, &settings(Protocol::Dense, &scales, true));
    let multi = post(
        &d.split,
        &nets,
        &settings(Protocol::MultiCrop, &scales, true),
    );
    for i in 0..d.split.len() as usize {
        let want = mean2(&dense.fused.mean(i), &multi.fused.mean(i));
        close(&both.fused.mean(i), &want, &format!("image {i}"));
    }
}

#[test]
fn a_cancelled_evaluation_is_an_interruption_not_a_score() {
    let d = data();
    let nets = [network("a", 9)];
    let s = settings(Protocol::Dense, &[INPUT], false);
    let cancel = Cancel::new();
    cancel.cancel();
    let e = evaluate(&d.split, &nets, &s, &Silent, &cancel).unwrap_err();
    assert!(
        matches!(
            e,
            EvalError::Interrupted {
                images: 0,
                total: 18
            }
        ),
        "{e}"
    );
    // The same evaluation, not cancelled, scores every image.
    let r = evaluate(&d.split, &nets, &s, &Silent, &Cancel::new()).unwrap();
    assert_eq!(r.fused.images, 18);
}

#[test]
fn limit_limits_and_the_report_is_consistent() {
    let d = data();
    let nets = [network("a", 9)];
    let mut s = settings(Protocol::Dense, &[INPUT], true);
    s.limit = Some(5);
    let calls = Calls::default();
    let r = evaluate(&d.split, &nets, &s, &calls, &Cancel::new()).unwrap();
    let calls = calls.0.into_inner().unwrap();
    assert_eq!(r.fused.images, 5);
    assert_eq!(r.per_network[0].1.images, 5);
    // A fixed sample spread over the classes (the split is sorted by class), in record order.
    let indices: Vec<u64> = r.images.iter().map(|i| i.index).collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
    let mut per_class = [0; 3];
    for i in &r.images {
        per_class[i.label as usize] += 1;
    }
    assert!(per_class.iter().all(|&n| n >= 1), "{per_class:?}");
    assert_eq!(
        evaluate(&d.split, &nets, &s, &Silent, &Cancel::new())
            .unwrap()
            .images
            .iter()
            .map(|i| i.index)
            .collect::<Vec<_>>(),
        indices,
        "the sample is fixed"
    );
    assert_eq!(calls.first(), Some(&(0, 5)));
    assert_eq!(calls.last(), Some(&(5, 5)));
    let p = post(&d.split, &nets, &s);
    assert_eq!(p.fused.images(), 5);
    let mut top1 = 0;
    for (img, row) in r.images.iter().zip(0..) {
        let m = p.fused.mean(row);
        assert_eq!(img.label, p.labels[row]);
        assert_eq!(img.top5.len(), 3, "only 3 classes");
        let best = (0..3)
            .max_by(|&a, &b| m[a].total_cmp(&m[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(img.top5[0], (best as u32, m[best]));
        assert!(img.top5.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(img.top1_correct, best as i64 == img.label);
        assert!(img.top5_correct, "3 classes: always in the top 5");
        top1 += u64::from(img.top1_correct);
    }
    assert_eq!(r.fused.top1_correct, top1);
    assert!(r.seconds > 0.0 && r.images_per_sec > 0.0);
    let json = serde_json::to_value(&r).unwrap();
    for key in [
        "fused",
        "per_network",
        "images",
        "seconds",
        "images_per_sec",
        "peak_rss_bytes",
    ] {
        assert!(json.get(key).is_some(), "{key}: {json}");
    }
    // A limit beyond the split is the whole split; zero is an error, not a perfect score.
    s.limit = Some(1000);
    assert_eq!(post(&d.split, &nets, &s).fused.images(), 18);
    s.limit = Some(0);
    let e = evaluate(&d.split, &nets, &s, &Silent, &Cancel::new()).unwrap_err();
    assert!(matches!(e, EvalError::NoImages(_)), "{e}");
    assert!(e.to_string().contains("nothing to evaluate"), "{e}");
}

#[test]
fn a_network_with_a_non_finite_parameter_is_refused() {
    let d = data();
    let mut net = network("diverged", 9);
    net.params[3].data[7] = f32::NAN;
    let s = settings(Protocol::Centre, &[INPUT], false);
    let e = evaluate(&d.split, &[net], &s, &Silent, &Cancel::new()).unwrap_err();
    match &e {
        EvalError::NonFinite {
            network,
            tensor,
            index,
            ..
        } => {
            assert_eq!((network.as_str(), *index), ("diverged", 7));
            assert_eq!(tensor, &parameters(&config())[3].name);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn bad_settings_are_clear_errors() {
    let d = data();
    let nets = [network("small-net", 10)];
    let s = settings(Protocol::Dense, &[INPUT, 8], true);
    let e = evaluate(&d.split, &nets, &s, &Silent, &Cancel::new()).unwrap_err();
    assert!(
        matches!(
            e,
            EvalError::ScaleTooSmall {
                scale: 8,
                input: 16,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("small-net") && msg.contains(" 8 ") && msg.contains("16"),
        "{msg}"
    );

    let mut wrong = network("wide", 11);
    wrong.config.classes = 4;
    wrong.params = network("x", 1).params; // also wrong, but classes are checked first
    let e = evaluate(
        &d.split,
        &[wrong],
        &settings(Protocol::Dense, &[INPUT], false),
        &Silent,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            EvalError::Classes {
                network_classes: 4,
                split_classes: 3,
                ..
            }
        ),
        "{e}"
    );

    let mut missing = network("m", 12);
    missing.params.pop();
    let e = evaluate(
        &d.split,
        &[missing],
        &settings(Protocol::Dense, &[INPUT], false),
        &Silent,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(matches!(e, EvalError::Layout { .. }), "{e}");
    assert!(e.to_string().contains("`fc8.bias` is missing"), "{e}");

    let e = evaluate(
        &d.split,
        &[],
        &settings(Protocol::Dense, &[INPUT], false),
        &Silent,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(matches!(e, EvalError::NoNetworks), "{e}");
    let mut s = settings(Protocol::Dense, &[INPUT], false);
    s.batch = 0;
    assert!(matches!(
        evaluate(&d.split, &nets, &s, &Silent, &Cancel::new()).unwrap_err(),
        EvalError::Settings(_)
    ));
}

#[test]
fn networks_load_from_checkpoints() {
    let d = data();
    let net = network("ignored", 13);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-s16.safetensors");
    Checkpoint {
        config: net.config.clone(),
        params: net.params.clone(),
        momenta: None,
        state: None,
    }
    .save(&path)
    .unwrap();
    let loaded = Network::from_checkpoint(&path).unwrap();
    assert_eq!(loaded.name, "tiny-s16");
    assert_eq!((&loaded.config, &loaded.params), (&net.config, &net.params));
    let s = settings(Protocol::Dense, &[INPUT], true);
    let a = post(&d.split, std::slice::from_ref(&loaded), &s);
    let b = post(&d.split, std::slice::from_ref(&net), &s);
    assert_eq!(a, b);
    let e = Network::from_checkpoint(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(e, EvalError::Checkpoint(_)), "{e}");
}
