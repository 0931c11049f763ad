//! `vgg model`: the VGG configurations as layer tables (`summary`) and as ONNX files (`export`).

use std::process::ExitCode;

use anyhow::Result;

use vgg::config::model::Summary;

use super::{network, print_json, Common};

/// The VGG configurations: layer tables with shapes, parameters and FLOPs.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: ModelCommand,
}

#[derive(clap::Subcommand)]
enum ModelCommand {
    /// A layer table (output shape, parameters, FLOPs per layer) and totals.
    ///
    /// CONFIG is a row of the paper's Table 1 (A, A-LRN, B, C, D, E; torchvision's vgg11,
    /// vgg13, vgg16, vgg19 name A, B, D, E) or a pipeline file whose [model] table defines the
    /// network. JSON keys: parameters, flops, macs, weight_layers,
    /// layers[...], config.
    Summary {
        /// A, A-LRN, B, C, D, E, vgg11 ... vgg19, or a pipeline file.
        config: String,
        /// Number of classes (default: 1000, or the pipeline's).
        #[arg(long, value_name = "N")]
        classes: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    Export(super::export::Args),
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    match &a.what {
        ModelCommand::Export(e) => super::export::run(c, e),
        ModelCommand::Summary {
            config,
            classes,
            json,
        } => {
            let (mut cfg, pipeline) = network(config)?;
            if let Some(n) = classes {
                cfg.classes = *n;
            }
            let mut s = cfg.summary();
            // The table's dropout is the paper's; a pipeline trains with its own.
            if let Some(p) = &pipeline {
                let rate = p.optimizer.dropout;
                let said = if rate == 0.0 {
                    "no dropout".to_string()
                } else {
                    format!("dropout {rate}")
                };
                for l in &mut s.layers {
                    l.detail = l.detail.replace("dropout 0.5", &said);
                }
            }
            if *json {
                print_json(&s)?;
            } else {
                print_summary(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_summary(s: &Summary) {
    let c = &s.config;
    println!(
        "VGG {}: {} weight layers, input {}x{}x{}, {} classes",
        c.name, s.weight_layers, c.in_channels, c.input, c.input, c.classes
    );
    println!(
        "{:<10} {:<28} {:>16} {:>14} {:>10}",
        "layer", "", "output", "parameters", "GFLOPs"
    );
    for l in &s.layers {
        let shape = l
            .output
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<10} {:<28} {:>16} {:>14} {:>10.3}",
            l.name,
            l.detail,
            shape,
            l.parameters,
            2.0 * l.macs as f64 / 1e9
        );
    }
    println!(
        "total: {} parameters ({:.1} M), {:.2} GFLOPs ({:.2} G multiply-adds) per image",
        s.parameters,
        s.parameters as f64 / 1e6,
        s.flops as f64 / 1e9,
        s.macs as f64 / 1e9
    );
}
