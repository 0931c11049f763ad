//! What the README claims holds when a long job meets the world: a `kill -9` in the middle of a
//! re-prepare, a store copied under another dataset's name, a full disk.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::cli::{text, vgg};
use crate::fixtures::{self, tree, ValForm};

fn registry(fx: &fixtures::Fixture, store: &str) {
    fx.registry("fx", &fx.dir.path().join("shards"), store);
}

fn verify_ok(dir: &Path, cwd: &Path) {
    let o = vgg(&["verify", dir.to_str().unwrap()], cwd);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn kill_9_during_a_re_prepare_leaves_the_old_store_valid_and_a_re_run_completes_the_new_one() {
    let fx = fixtures::imagenet(40, ValForm::ClassFolders);
    let d = fx.dir.path();
    registry(&fx, "max_shortest_side = 96\nrecords_per_shard = 4\n");
    let o = prepare_fx(d);
    assert!(o.status.success(), "{}", text(&o));
    let train = d.join("shards/train");
    let old = tree(&train);
    // A changed policy: every shard must be written again, into .train.next/.
    registry(
        &fx,
        "max_shortest_side = 64\nrecords_per_shard = 2\nencoding = \"raw\"\n",
    );
    let next = d.join("shards/.train.next");
    let mut killed = false;
    for _attempt in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vgg"))
            .args(["--datasets", "fx.toml", "prepare", "fx", "--split", "train"])
            .args(["--threads", "1", "-q"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait (no clock) until the replacement holds a finished shard, then kill -9.
        loop {
            let shards = std::fs::read_dir(&next)
                .map(|r| {
                    r.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".vggshard"))
                        .count()
                })
                .unwrap_or(0);
            if shards >= 2 {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed = true;
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break; // finished before it could be caught; undo and try again
            }
            std::thread::yield_now();
        }
        if killed {
            break;
        }
        registry(&fx, "max_shortest_side = 96\nrecords_per_shard = 4\n");
        let o = prepare_fx(d);
        assert!(o.status.success(), "{}", text(&o));
        registry(
            &fx,
            "max_shortest_side = 64\nrecords_per_shard = 2\nencoding = \"raw\"\n",
        );
    }
    assert!(
        killed,
        "prepare finished three times before it could be killed"
    );
    // The old store is untouched and verifies.
    assert_eq!(old, tree(&train), "the committed store was changed");
    verify_ok(&train, d);
    // The lock of the killed process is stale: a re-run takes it over and completes the new store.
    let o = prepare_fx(d);
    assert!(o.status.success(), "{}", text(&o));
    let split = vgg::data::store::PreparedSplit::open(&train).unwrap();
    assert_eq!(split.manifest.store.max_shortest_side.0, 64);
    assert!(!next.exists());
    drop(split);
    verify_ok(&train, d);
}

#[test]
fn verify_refuses_a_store_copied_under_another_datasets_name() {
    let fx = fixtures::imagenet(1, ValForm::ClassFolders);
    let d = fx.dir.path();
    registry(&fx, "max_shortest_side = 96\n");
    let o = prepare_fx(d);
    assert!(o.status.success(), "{}", text(&o));
    let reg = std::fs::read_to_string(d.join("fx.toml")).unwrap();
    std::fs::create_dir_all(d.join("other-root/train")).unwrap();
    std::fs::write(
        d.join("fx.toml"),
        format!("{reg}[datasets.other]\nsource = \"folder\"\nroot = \"other-root\"\nshards = \"copied\"\n"),
    )
    .unwrap();
    let o = Command::new("cp")
        .args(["-r", "shards", "copied"])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(o.success());
    let o = vgg(&["--datasets", "fx.toml", "verify", "other"], d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("holds the store of dataset `fx`") && err.contains("not of `other`"),
        "{}",
        text(&o)
    );
    // The same store under its own name verifies; a folder path is checked for its content only.
    let o = vgg(&["--datasets", "fx.toml", "verify", "fx"], d);
    assert!(o.status.success(), "{}", text(&o));
    let o = vgg(&["--datasets", "fx.toml", "verify", "./copied"], d);
    assert!(o.status.success(), "{}", text(&o));
}

/// A re-prepare that fills the disk: the error says so and the previous store stays valid.
/// Needs root to mount a tmpfs; where that is impossible it says so and passes.
#[test]
fn a_full_disk_during_a_re_prepare_is_a_clear_error_and_the_old_store_stays_valid() {
    let fx = fixtures::imagenet(6, ValForm::ClassFolders);
    let d = fx.dir.path();
    let mnt = d.join("small-disk");
    let Some(_guard) = small_disk(&mnt, "256k", "full-disk re-prepare") else {
        return;
    };
    let shards = mnt.join("shards");
    fx.registry("fx", &shards, "max_shortest_side = 64\n");
    let o = prepare_fx(d);
    assert!(o.status.success(), "{}", text(&o));
    let train = shards.join("train");
    let old = tree(&train);
    // Raw pixels at a larger cap do not fit beside the old store.
    fx.registry(
        "fx",
        &shards,
        "max_shortest_side = 512\nencoding = \"raw\"\nrecords_per_shard = 2\n",
    );
    let o = prepare_fx(d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("disk is full"),
        "{}",
        text(&o)
    );
    assert_eq!(old, tree(&train), "the committed store was changed");
    verify_ok(&train, d);
}

/// SIGTERM to one rank of a two-process run (torchrun's variables, loopback): both stop after
/// the same step, rank 0 writes the one checkpoint at that step, and both resume it to the end.
#[test]
fn sigterm_to_one_rank_stops_both_with_one_checkpoint_that_resumes() {
    use crate::distributed::{free_port, torchrun, vgg_train};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::train::dataset(d);
    crate::train::pipeline(
        d,
        "[optimizer]\nlr = 0.01\n[schedule]\nkind = \"constant\"\n[training]\n\
         init = { kind = \"glorot\" }\nepochs = 2\nlog_every = 1\nsync_timeout = 20\n",
    );
    let elsewhere = d.join("rank1");
    std::fs::create_dir(&elsewhere).unwrap();
    let port = free_port();
    let r0 = vgg_train(d, d, "p.toml", &torchrun(0, port))
        .spawn()
        .unwrap();
    let r1 = vgg_train(d, &elsewhere, "p.toml", &torchrun(1, port))
        .spawn()
        .unwrap();
    // Once training is under way (a step is logged), stop rank 1 the way a scheduler does.
    let metrics = d.join("run/metrics.jsonl");
    loop {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        if text.lines().any(|l| l.contains("\"kind\":\"step\"")) {
            break;
        }
        std::thread::yield_now();
    }
    // SAFETY: sending a signal to a child process of this test.
    unsafe {
        libc::kill(r1.id() as i32, libc::SIGTERM);
    }
    let (o0, o1) = (
        r0.wait_with_output().unwrap(),
        r1.wait_with_output().unwrap(),
    );
    assert_eq!(o1.status.code(), Some(143), "rank 1: {}", text(&o1));
    assert!(
        o0.status.code().is_some(),
        "rank 0 was killed: {}",
        text(&o0)
    );
    assert!(
        !elsewhere.join("run").exists(),
        "rank 1 wrote a run directory"
    );
    let ck = vgg::net::checkpoint::Checkpoint::load(&d.join("run/last.safetensors")).unwrap();
    let stopped_at = ck.state.as_ref().unwrap()["step"].as_u64().unwrap();
    let steps_per_epoch = 400 / 16;
    assert!(
        stopped_at < 2 * steps_per_epoch,
        "the run was not stopped: step {stopped_at}"
    );
    let last_logged = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["step"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(
        last_logged, stopped_at,
        "the checkpoint is not at the last step"
    );
    // Both resume it to the end.
    let port = free_port();
    let mut a = vgg_train(d, d, "p.toml", &torchrun(0, port));
    let mut b = vgg_train(d, &elsewhere, "p.toml", &torchrun(1, port));
    // Rank 1 reads the run directory too: it must see the same one.
    b.current_dir(d);
    let (r0, r1) = (
        a.arg("--resume").spawn().unwrap(),
        b.arg("--resume").spawn().unwrap(),
    );
    let (o0, o1) = (
        r0.wait_with_output().unwrap(),
        r1.wait_with_output().unwrap(),
    );
    assert!(o0.status.success(), "rank 0: {}", text(&o0));
    assert!(o1.status.success(), "rank 1: {}", text(&o1));
    let ck = vgg::net::checkpoint::Checkpoint::load(&d.join("run/last.safetensors")).unwrap();
    assert_eq!(
        ck.state.as_ref().unwrap()["step"].as_u64().unwrap(),
        2 * steps_per_epoch
    );
}

/// A checkpoint write that fills the disk: a clear error, and the previous checkpoint is kept
/// whole and resumable. Needs root to mount a tmpfs; where that is impossible it says so and
/// passes.
#[test]
fn a_full_disk_at_a_checkpoint_is_a_clear_error_and_the_previous_checkpoint_stays_whole() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::messages::toy(d);
    let o = vgg(&["train", "p.toml", "--out", "run", "-q"], d);
    assert!(o.status.success(), "{}", text(&o));
    let mnt = d.join("small-disk");
    let Some(_guard) = small_disk(&mnt, "8m", "full-disk checkpoint") else {
        return;
    };
    // -a keeps the run's hard links (epoch-start.safetensors is last.safetensors' link).
    let o = Command::new("cp")
        .args(["-a", "run"])
        .arg(mnt.join("run"))
        .current_dir(d)
        .status()
        .unwrap();
    assert!(o.success());
    let last = mnt.join("run/last.safetensors");
    let before = std::fs::read(&last).unwrap();
    // At an epoch boundary the epoch's start is the last checkpoint; as a link, resuming frees
    // no space by linking it again.
    let start = mnt.join("run/epoch-start.safetensors");
    std::fs::remove_file(&start).unwrap();
    std::fs::hard_link(&last, &start).unwrap();
    // Fill the disk, then free a few pages: room for the logs, not for a checkpoint.
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    drop(f);
    let room = 64 * 1024;
    assert!(
        before.len() as u64 > 2 * room,
        "the checkpoint is too small for this test"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(written.saturating_sub(room))
        .unwrap();
    let out = mnt.join("run");
    let o = vgg(
        &[
            "train",
            "p.toml",
            "--out",
            out.to_str().unwrap(),
            "--resume",
            "--epochs",
            "2",
            "-q",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the disk is full"),
        "{}",
        text(&o)
    );
    assert!(
        std::fs::read(&last).unwrap() == before,
        "the previous checkpoint was changed"
    );
    vgg::net::checkpoint::Checkpoint::load(&last).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

/// Unmounts its folder when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `size` mounted at `mnt` (a small disk to fill), or None, after saying the
/// `test` is skipped, where mounting is not permitted (it needs root).
fn small_disk(mnt: &std::path::Path, size: &str, test: &str) -> Option<Unmount> {
    std::fs::create_dir_all(mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIPPED {test} test: cannot mount a tmpfs here (needs root)");
        return None;
    }
    Some(Unmount(mnt.to_path_buf()))
}

/// `vgg --datasets fx.toml prepare fx --split train -q` in `dir`.
fn prepare_fx(dir: &std::path::Path) -> std::process::Output {
    vgg(
        &[
            "--datasets",
            "fx.toml",
            "prepare",
            "fx",
            "--split",
            "train",
            "-q",
        ],
        dir,
    )
}
