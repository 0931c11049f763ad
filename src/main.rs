//! The `vgg` command: a thin front over the library. It parses the arguments, hands each
//! command to its file in `commands/`, and decides the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

use commands::{bench, datasets, eval, generate, inspect, model, prepare, preview, runtime};
use commands::{train, verify, weights, Common};

#[derive(Parser)]
#[command(
    name = "vgg",
    version,
    about = "Reproduce and train the VGG networks (Simonyan & Zisserman, ICLR 2015)",
    long_about = "Reproduce and train the VGG networks (Simonyan & Zisserman, ICLR 2015).\n\n\
        Data flow: datasets.toml -> `vgg prepare` -> shards + manifest -> loader (the paper's\n\
        augmentation, pipelines/*.toml) -> `vgg train` -> checkpoints, metrics.jsonl, plots ->\n\
        `vgg eval` (dense, multi-crop, multi-scale, fusion) -> top-1/top-5 error tables.\n\
        Datasets are declared by name in datasets.toml (see --datasets); the embedded default is\n\
        `synthetic-shapes`, a generated stand-in for ImageNet that needs no download.\n\n\
        Ctrl-C, SIGTERM or SIGUSR1 stops a long command cleanly (training writes a checkpoint\n\
        first); a second one exits at once. Exit codes: 0 success, 1 failure, 2 bad arguments,\n\
        128 + the signal when stopped (130 for Ctrl-C, 143 for SIGTERM).",
    after_help = "Examples:\n  vgg prepare synthetic-shapes\n  vgg prepare imagenet --split train --part 3/16 --threads 8\n  vgg inspect shards/synthetic-shapes --json\n  vgg train pipelines/demo.toml --out runs/demo\n  vgg eval pipelines/demo.toml --checkpoint runs/demo/best.safetensors --protocol dense+multi-crop"
)]
struct Cli {
    /// Dataset registry file.
    #[arg(long, global = true, default_value = vgg::config::registry::DEFAULT_PATH, value_name = "FILE")]
    datasets: PathBuf,
    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Prepare(prepare::Args),
    Generate(generate::Args),
    Inspect(inspect::Args),
    Verify(verify::Args),
    Datasets(datasets::Args),
    Preview(preview::Args),
    Model(model::Args),
    Bench(bench::Args),
    Train(train::Args),
    Eval(eval::Args),
    Weights(weights::Args),
    Runtime(runtime::Args),
}

fn main() -> ExitCode {
    // A closed pipe (`vgg inspect x | head`) ends the process quietly, as it does other Unix
    // tools, instead of a panic in println!.
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    commands::progress::install_interrupt_handler();
    let c = Common {
        datasets: cli.datasets.clone(),
        quiet: cli.quiet,
    };
    let result = match &cli.command {
        Command::Prepare(a) => prepare::run(&c, a),
        Command::Generate(a) => generate::run(&c, a),
        Command::Inspect(a) => inspect::run(&c, a),
        Command::Verify(a) => verify::run(&c, a),
        Command::Datasets(a) => datasets::run(&c, a),
        Command::Preview(a) => preview::run(&c, a),
        Command::Model(a) => model::run(&c, a),
        Command::Bench(a) => bench::run(&c, a),
        Command::Train(a) => train::run(&c, a),
        Command::Eval(a) => eval::run(&c, a),
        Command::Weights(a) => weights::run(&c, a),
        Command::Runtime(a) => runtime::run(&c, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            // 128 + the signal (130 for Ctrl-C), so scripts can tell an interruption.
            if commands::progress::CANCEL.is_cancelled() {
                ExitCode::from(commands::progress::interrupted_code())
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, each cause left out when the message already says it (library
/// errors carry their reason in their own message for callers that print only that).
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    if msg.contains("(os error 28)") && !msg.contains("disk is full") {
        msg.push_str(
            " (the disk is full: free space and run the command again; every output is replaced \
             whole or not at all, so what is on disk is the previous version, and `vgg train \
             --resume` continues from the last checkpoint)",
        );
    }
    msg
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
