//! `vgg train` as several processes, the way torchrun and Slurm start it: two CPU processes on
//! the loopback address (one with torchrun's variables, one with Slurm's) train the same run
//! as one process, only rank 0 writes; a rank that never comes and a rank with another
//! pipeline stop the job with a clear error instead of a hang.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use vgg::net::checkpoint::Checkpoint;

use crate::train::{dataset, pipeline};

const RECIPE: &str = "[optimizer]\nlr = 0.01\n[schedule]\nkind = \"constant\"\n\
                      [training]\ninit = { kind = \"glorot\" }\nepochs = 1\nlog_every = 5\nsync_timeout = 20\n";

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `vgg train PIPELINE --out run` in `cwd` with the launcher variables `env`.
pub(crate) fn vgg_train(dir: &Path, cwd: &Path, pipeline: &str, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vgg"));
    c.arg("--datasets")
        .arg(dir.join("datasets.toml"))
        .args(["train"])
        .arg(dir.join(pipeline))
        .args(["--out", "run", "--threads", "1"])
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
        "SLURM_NODELIST",
        "SLURM_STEP_NODELIST",
        "SLURM_JOB_NODELIST",
    ] {
        c.env_remove(var);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

pub(crate) fn torchrun(rank: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", "2".into()),
        ("LOCAL_RANK", rank.to_string()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
    ]
}

fn slurm(rank: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("SLURM_PROCID", rank.to_string()),
        ("SLURM_NTASKS", "2".into()),
        ("SLURM_LOCALID", rank.to_string()),
        ("SLURM_NODELIST", "localhost".into()),
        ("MASTER_PORT", port.to_string()),
    ]
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn two_processes_train_the_same_run_as_one_and_only_rank_0_writes() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    pipeline(dir.path(), RECIPE);
    let one = vgg_train(dir.path(), dir.path(), "p.toml", &[])
        .output()
        .unwrap();
    assert!(one.status.success(), "{}", text(&one));
    std::fs::rename(dir.path().join("run"), dir.path().join("single")).unwrap();

    // Rank 1 runs in its own, empty directory: it must write nothing there.
    let elsewhere = dir.path().join("rank1");
    std::fs::create_dir(&elsewhere).unwrap();
    let port = free_port();
    let r0 = vgg_train(dir.path(), dir.path(), "p.toml", &torchrun(0, port))
        .spawn()
        .unwrap();
    let r1 = vgg_train(dir.path(), &elsewhere, "p.toml", &slurm(1, port))
        .spawn()
        .unwrap();
    let (o0, o1) = (
        r0.wait_with_output().unwrap(),
        r1.wait_with_output().unwrap(),
    );
    assert!(o0.status.success(), "rank 0: {}", text(&o0));
    assert!(o1.status.success(), "rank 1: {}", text(&o1));
    assert!(
        !elsewhere.join("run").exists(),
        "rank 1 wrote a run directory"
    );
    let a = Checkpoint::load(&dir.path().join("single/last.safetensors")).unwrap();
    let b = Checkpoint::load(&dir.path().join("run/last.safetensors")).unwrap();
    assert_eq!(
        a.state.as_ref().unwrap()["step"],
        b.state.as_ref().unwrap()["step"]
    );
    let mut worst = 0f32;
    for (x, y) in a.params.iter().zip(&b.params) {
        let scale = x.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        for (p, q) in x.data.iter().zip(&y.data) {
            worst = worst.max((p - q).abs() / scale);
        }
    }
    assert!(worst < 1e-4, "two processes differ from one by {worst:e}");
    assert!(
        a.params
            .iter()
            .zip(&vgg::net::init::initialise(
                &a.config,
                vgg::config::training::Init::Glorot,
                3
            ))
            .any(|(x, y)| x.data != y.data),
        "the run did not train"
    );
    // The validation split over the two ranks counts every image once.
    let val = |d: &str| {
        vgg::train::metrics::read_records(&dir.path().join(d).join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                vgg::train::metrics::Record::Epoch(e) => Some((e.val_top1_error, e.val_top5_error)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(val("single"), val("run"));
}

#[test]
fn a_rank_that_never_comes_and_a_rank_with_another_pipeline_stop_the_job() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    pipeline(
        dir.path(),
        &RECIPE.replace("sync_timeout = 20", "sync_timeout = 2"),
    );
    std::fs::rename(dir.path().join("p.toml"), dir.path().join("short.toml")).unwrap();
    let port = free_port();
    let alone = vgg_train(dir.path(), dir.path(), "short.toml", &torchrun(0, port))
        .output()
        .unwrap();
    assert!(!alone.status.success(), "{}", text(&alone));
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(
        err.contains("rank 1") && err.contains("did they start"),
        "{}",
        text(&alone)
    );

    // Another learning rate on rank 1: refused at the rendezvous, on both sides.
    pipeline(dir.path(), RECIPE);
    pipeline(dir.path(), &RECIPE.replace("lr = 0.01", "lr = 0.02"));
    std::fs::rename(dir.path().join("p.toml"), dir.path().join("other.toml")).unwrap();
    pipeline(dir.path(), RECIPE);
    let port = free_port();
    let r0 = vgg_train(dir.path(), dir.path(), "p.toml", &torchrun(0, port))
        .spawn()
        .unwrap();
    let r1 = vgg_train(dir.path(), dir.path(), "other.toml", &torchrun(1, port))
        .spawn()
        .unwrap();
    let (o0, o1) = (
        r0.wait_with_output().unwrap(),
        r1.wait_with_output().unwrap(),
    );
    for o in [&o0, &o1] {
        assert!(!o.status.success(), "{}", text(o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("pipeline differs"),
            "{}",
            text(o)
        );
    }
}
