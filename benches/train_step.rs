//! Training-step throughput on the CPU: `cargo bench --bench train_step` runs what
//! `vgg bench train-step` runs (the step session as the trainer drives it, on a random batch,
//! with the forward/backward/update split from ONNX Runtime's profiler), so `make bench`
//! covers it; with `--peer PYTHON` it also runs the PyTorch peer
//! (`benches/peers/torch_train_step.py`) in the same run and reports the ratio.
//!
//! Options: `--steps N` (20), `--batch N` (32), `--threads 1,2`, `--config NAME` (A),
//! `--width W` (0.125), `--input S` (64), `--classes C` (10), `--rounds R` (1), `--replicas N|auto` (auto),
//! `--profile-steps N` (5), `--peer PYTHON`, `--json`. Defaults: the demo network of
//! `pipelines/demo.toml`.

use vgg::bench::step::{step_bench, Peer, StepBenchOptions};
use vgg::config::model::VggConfig;
use vgg::train::parallel::Replicas;
use vgg::util::progress::Cancel;

fn usage(msg: &str) -> ! {
    eprintln!(
        "train_step: {msg}\noptions: --steps N --batch N --threads 1,2 --config NAME --width W \
         --input S --classes C --rounds R --replicas N|auto --profile-steps N --peer PYTHON --json"
    );
    std::process::exit(2)
}

fn main() {
    let (mut steps, mut batch, mut rounds, mut profile_steps) = (20, 32, 1, 5);
    let mut replicas = Replicas::Auto;
    let mut threads = vec![1, 2];
    let (mut config, mut width, mut input, mut classes) = ("A".to_string(), 0.125, 64i64, 10i64);
    let (mut peer, mut json) = (None, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // cargo bench passes it
        }
        if flag == "--json" {
            json = true;
            continue;
        }
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| -> f64 { v.parse().unwrap_or_else(|_| usage(&format!("{flag} {v}"))) };
        match flag.as_str() {
            "--steps" => steps = num(&v) as usize,
            "--batch" => batch = num(&v) as usize,
            "--rounds" => rounds = num(&v) as usize,
            "--replicas" => replicas = v.parse().unwrap_or_else(|e: String| usage(&e)),
            "--profile-steps" => profile_steps = num(&v) as usize,
            "--threads" => threads = v.split(',').map(|t| num(t) as usize).collect(),
            "--config" => config = v,
            "--width" => width = num(&v),
            "--input" => input = num(&v) as i64,
            "--classes" => classes = num(&v) as i64,
            "--peer" => peer = Some(v),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    let mut t = toml::Table::new();
    t.insert("config".into(), config.clone().into());
    t.insert("width".into(), width.into());
    t.insert("classes".into(), classes.into());
    t.insert("input".into(), input.into());
    let network = VggConfig::from_table(&t).unwrap_or_else(|e| usage(&e.to_string()));
    let o = StepBenchOptions {
        config: network,
        table_row: config,
        width,
        batch,
        threads,
        replicas,
        steps,
        profile_steps,
        rounds,
        peer: peer.map(|python| Peer {
            python: python.into(),
            script: Peer::default_script(),
        }),
    };
    let r = step_bench(&o, &Cancel::new(), |line| eprintln!("  {line}"))
        .unwrap_or_else(|e| panic!("{e}"));
    if json {
        println!(
            "{}",
            serde_json::to_string(&r).expect("the report serialises")
        );
        return;
    }
    println!(
        "# training-step benchmark: {}, batch {}",
        r.network, r.batch
    );
    println!("machine: {} ({} cores)", r.machine.cpu, r.machine.cores);
    for row in &r.rows {
        let p = &row.vgg.phases;
        print!(
            "threads {}: vgg {:.1} ms/step (forward {:.1}, backward {:.1}, update {:.1}, other {:.1} ms)",
            row.threads, row.vgg.ms_per_step, p.forward_ms, p.backward_ms, p.update_ms, p.other_ms
        );
        match (&row.peer, row.ratio) {
            (Some(q), Some(ratio)) => {
                println!(", PyTorch {:.1} ms/step, ratio {ratio:.2}", q.ms_per_step)
            }
            _ => println!(),
        }
    }
    if let Some(e) = r.peer_error {
        eprintln!("the peer did not run: {e}");
    }
}
