//! `vgg runtime`: which ONNX Runtime library is loaded, its version and execution providers.

use std::process::ExitCode;

use anyhow::Result;

use super::{print_json, Common};

/// Show the ONNX Runtime library in use: path, version, execution providers.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(_c: &Common, a: &Args) -> Result<ExitCode> {
    let info = vgg::net::runtime::info()?;
    if a.json {
        print_json(&info)?;
    } else {
        println!(
            "ONNX Runtime {} from {}",
            info.version,
            info.library.display()
        );
        println!("execution providers: {}", info.providers.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
