//! `vgg datasets`: the registry's datasets, where their images are and where their shards go.

use std::process::ExitCode;

use anyhow::Result;

use super::{print_json, Common};

/// List the datasets of the registry.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let reg = c.registry()?;
    if a.json {
        print_json(&reg.datasets)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (name, d) in &reg.datasets {
        println!(
            "{name:<24} {:<10} root {}  shards {}",
            d.source.to_string(),
            d.root.display(),
            d.shards.display()
        );
        if let Some(desc) = &d.description {
            println!("{:<24} {desc}", "");
        }
    }
    Ok(ExitCode::SUCCESS)
}
