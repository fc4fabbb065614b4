//! `zoo`: the model zoo's one command.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use zoo_infer::classify::{Inputs, classify, load_classifier};
use zoo_infer::device::{compiled_backends, select_device};
use zoo_models::ZooConfig;

#[derive(Parser)]
#[command(name = "zoo", version, about = "ViT, TNT and DETR in Rust on Burn, with PyTorch's numbers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DeviceArg {
    /// Backend to run on: flex, ndarray, wgpu or tch (those compiled in). Default: BURN_DEVICE,
    /// else the best compiled in.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Classify images (or a preprocessed .npy batch) with a ViT or TNT.
    Classify {
        #[arg(long)]
        config: PathBuf,
        /// Weights: .safetensors, .pth/.pt/.bin (timm) or .bpk (zoo).
        #[arg(long)]
        weights: PathBuf,
        /// Image files (PNG, JPEG), batched by eval.batch_size.
        #[arg(long, num_args = 1.., required_unless_present = "input_npy", conflicts_with = "input_npy")]
        image: Vec<PathBuf>,
        /// A preprocessed float32 [B, 3, H, W] batch.
        #[arg(long)]
        input_npy: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Print one JSON object with `logits` and `top_k`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Convert a checkpoint (.safetensors, .pth) to burnpack (.bpk), which loads faster.
    Convert {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// List the backends compiled into this binary.
    Devices,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Classify { config, weights, image, input_npy, top_k, json, device } => {
            let device = select_device(device.device.as_deref())?;
            let cfg = ZooConfig::from_file(&config)?;
            let model = load_classifier(&cfg, &config, &weights, &device)?;
            let inputs = match input_npy {
                Some(path) => Inputs::Npy(path),
                None => Inputs::Images(image),
            };
            let result = classify(&model, &cfg, &inputs, top_k, &device)?;
            if json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{}", result.to_text());
            }
        }
        Command::Convert { config, weights, out } => {
            if out.extension().and_then(|e| e.to_str()) != Some("bpk") {
                bail!("--out {}: the burnpack file name must end in .bpk", out.display());
            }
            let device = select_device(None)?;
            let cfg = ZooConfig::from_file(&config)?;
            let model = load_classifier(&cfg, &config, &weights, &device)?;
            model.save(&out).with_context(|| format!("converting {}", weights.display()))?;
            println!("wrote {}", out.display());
        }
        Command::Devices => println!("{}", compiled_backends().join("\n")),
    }
    Ok(())
}
