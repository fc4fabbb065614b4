//! `zoo`: the model zoo's one command.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use zoo_infer::Inputs;
use zoo_infer::attention::{AttentionOptions, classifier_attention, detr_attention};
use zoo_infer::bench::{BenchOptions, bench, bench_loader};
use zoo_infer::classify::{classify, load_classifier};
use zoo_infer::coco_eval::{CocoGroundTruth, evaluate, load_detections};
use zoo_infer::demo::{DemoDataset, DemoOptions, generate_demo_dataset, run_demo};
use zoo_infer::detect::{detect, draw_detections, load_detr};
use zoo_infer::device::{Precision, devices_named, list_devices, select_device};
use zoo_infer::eval::{eval_classifier, eval_detr};
use zoo_infer::pretrained::Pretrained;
use zoo_models::{ModelConfig, save_burnpack};
use zoo_train::ZooConfig;
use zoo_train::config::is_hub_name;
use zoo_train::detection::train_detr;
use zoo_train::{TrainOptions, train_classifier};

/// Tensors come and go by the megabyte. By default glibc's allocator maps each one of more than
/// a few megabytes afresh and returns it to the kernel when freed, so every forward pass pays page
/// faults for memory it had a moment ago: keep blocks up to 32 MiB (its largest setting) on the
/// heap and freed memory in the process. (TNT-S inference 4.8 -> 6.5 images/s here; mimalloc
/// did as well for inference but halved the training step.)
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Make the main thread one of the threads of rayon's global pool (which flex, gemm and the CPU
/// kernels use). Otherwise every parallel operation is handed from the main thread to the pool,
/// the main thread sleeps until it is done and must be woken again: thousands of futex wake-ups per
/// forward pass of TNT-S, whose operations last well under a millisecond at batch 1 (TNT-S batch 1
/// 7.8 -> 10 images/s here, a TNT-S training step +9%). As a pool thread, the main thread computes
/// its share of each operation and the pool is one thread smaller.
fn compute_on_main_thread() {
    // On failure (the pool already exists, or a thread could not be started) rayon's pool is
    // used as it is, or built as usual on first use.
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
}

#[derive(Parser)]
#[command(name = "zoo", version, about = "ViT, TNT and DETR in Rust on Burn, with PyTorch's numbers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DeviceArg {
    /// Device to run on: flex, ndarray, tch, tch:cuda:N, tch:mps, wgpu, wgpu:N (N-th discrete
    /// GPU), wgpu:integrated:N, wgpu:cpu (`zoo devices` lists this machine's). Default:
    /// BURN_DEVICE, else the best backend compiled in.
    #[arg(long)]
    device: Option<String>,
    /// Float type to compute in: f32 (default), f16 or bf16, where the device has it (`zoo
    /// devices`); weights of any float type are converted. Training: default train.precision.
    #[arg(long)]
    precision: Option<Precision>,
}

impl DeviceArg {
    fn select(&self) -> Result<burn::prelude::Device> {
        select_device(self.device.as_deref(), self.precision.unwrap_or_default())
    }
}

/// A model: by its Hub name, or a config file and a weights file.
#[derive(Args)]
struct ModelSource {
    /// A model of the Hugging Face Hub by name, e.g. `timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`
    /// or `facebook/detr-resnet-50` (`@revision` to pin one): config, labels and weights from its
    /// repository, downloaded once into the Hub's cache (HF_HOME, HF_ENDPOINT, HF_TOKEN,
    /// HF_HUB_OFFLINE as huggingface_hub reads them). See `zoo models`.
    #[arg(long, conflicts_with_all = ["config", "weights"], required_unless_present = "config")]
    model: Option<String>,
    /// The zoo's TOML config of the model.
    #[arg(long, requires = "weights")]
    config: Option<PathBuf>,
    /// Weights: .safetensors or .pth/.pt/.bin as timm, transformers or facebookresearch/detr
    /// write them, or the zoo's .bpk.
    #[arg(long, requires = "config")]
    weights: Option<PathBuf>,
}

impl ModelSource {
    /// The config, the file it came from (named in errors) and the weights file.
    fn resolve(&self) -> Result<(ZooConfig, PathBuf, PathBuf)> {
        match (&self.model, &self.config, &self.weights) {
            (Some(name), ..) => {
                let pretrained = Pretrained::from_hub(name)?;
                let weights = pretrained.weights()?;
                Ok((pretrained.config, pretrained.config_file, weights))
            }
            (None, Some(config), Some(weights)) => Ok((ZooConfig::from_file(config)?, config.clone(), weights.clone())),
            _ => bail!("give --model, or --config and --weights"),
        }
    }
}

/// A model, its weights and what to run it on.
#[derive(Args)]
struct ModelRun {
    #[command(flatten)]
    source: ModelSource,
    /// Image files (PNG, JPEG), transformed as the model's evaluation does and batched by
    /// eval.batch_size (DETR pads each batch, as it does).
    #[arg(long, num_args = 1.., required_unless_present = "input_npy", conflicts_with = "input_npy")]
    image: Vec<PathBuf>,
    /// A preprocessed float32 [B, 3, H, W] batch (no padding).
    #[arg(long)]
    input_npy: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
}

impl ModelRun {
    fn inputs(&self) -> Inputs {
        match &self.input_npy {
            Some(path) => Inputs::Npy(path.clone()),
            None => Inputs::Images(self.image.clone()),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Classify images (or a preprocessed .npy batch) with a ViT or TNT.
    Classify {
        #[command(flatten)]
        run: ModelRun,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Print one JSON object with `logits` and `top_k`.
        #[arg(long)]
        json: bool,
    },
    /// Train a model (ViT, TNT on class folders; DETR on a COCO set) as its config's [train]
    /// section says, with checkpoints and validation every epoch.
    Train {
        #[arg(long)]
        config: PathBuf,
        /// Continue from the last checkpoint in train.output_dir.
        #[arg(long)]
        resume: bool,
        /// Write batches.jsonl in train.output_dir: each epoch's image files in batch order.
        #[arg(long)]
        record_batches: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Write one of the demo's generated datasets (the same files `zoo demo` trains on):
    /// `textures` as class folders, `objects` in COCO's layout.
    Generate {
        #[arg(value_enum)]
        dataset: DemoDataset,
        #[arg(long)]
        out: PathBuf,
        /// Training images (per class for textures; the demo's number by default); a quarter as
        /// many for validation.
        #[arg(long)]
        train: Option<usize>,
    },
    /// Generate small datasets, train a small ViT and a tiny DETR on them, evaluate both,
    /// classify held-out images and draw the detector's boxes.
    Demo {
        /// Where the dataset, the run and the held-out images go.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Epochs (default: the embedded config's).
        #[arg(long)]
        epochs: Option<usize>,
        /// Generated training images per class (a quarter as many for validation).
        #[arg(long, default_value_t = zoo_infer::demo::TEXTURES_PER_CLASS)]
        train_per_class: usize,
        /// DETR epochs (default: the embedded config's); 0 skips the detector.
        #[arg(long)]
        detr_epochs: Option<usize>,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Detect objects with DETR in images (or a preprocessed .npy batch).
    Detect {
        #[command(flatten)]
        run: ModelRun,
        /// Detections scoring below this are left out of `detections` and the pictures.
        #[arg(long, default_value_t = 0.7)]
        threshold: f32,
        /// Write each image with its detections drawn to this folder (PNG).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print one JSON object with `pred_logits`, `pred_boxes` and `detections`.
        #[arg(long)]
        json: bool,
    },
    /// Where a model looks: every layer's attention probabilities (--npy-out) and heat maps over
    /// the images (--out): ViT/TNT the last layer's class-token attention per head and attention
    /// rollout (TNT also one patch's inner attention); DETR each detection's cross-attention and
    /// the encoder's self-attention from reference points. All inputs run as one batch.
    Attention {
        #[command(flatten)]
        run: ModelRun,
        /// Write the heat maps here (PNG, `<image>.<map>.png` and `<image>.sheet.png`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write every layer's probabilities here as float32 .npy: `attn_{i}` [B, heads, N, N]
        /// (N counts the class token), `inner_attn_{i}` [B * patches, heads, pixels, pixels];
        /// DETR `encoder_attn_{i}` [B, heads, HW, HW], `decoder_self_attn_{i}` [B, heads, Q, Q],
        /// `decoder_cross_attn_{i}` [B, heads, Q, HW] (HW row-major over the feature map).
        #[arg(long)]
        npy_out: Option<PathBuf>,
        /// DETR: draw the detections scoring at least this.
        #[arg(long, default_value_t = 0.7)]
        threshold: f32,
        /// DETR: reference points `x,y` (image pixels) for the encoder's self-attention; default
        /// the centres of the detections (at most four), else the image centre.
        #[arg(long, num_args = 1.., value_parser = point)]
        points: Vec<(f32, f32)>,
        /// TNT: the patch (row-major, from 0) whose inner attention is drawn; default the centre.
        #[arg(long)]
        patch: Option<usize>,
    },
    /// Convert a checkpoint (.safetensors, .pth) of any zoo model to burnpack (.bpk), which loads faster.
    Convert {
        #[command(flatten)]
        source: ModelSource,
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluate on a dataset: DETR with --annotations/--images (COCO mAP), a classifier with
    /// --data (top-1/top-5 over class folders).
    Eval {
        #[command(flatten)]
        source: ModelSource,
        /// COCO instances JSON (DETR).
        #[arg(long, requires = "images")]
        annotations: Option<PathBuf>,
        /// Folder of the annotated images (DETR).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Write the detections as a COCO results JSON (DETR).
        #[arg(long)]
        results_out: Option<PathBuf>,
        /// Validation folder `<class>/<image>` (classifiers).
        #[arg(long, conflicts_with = "annotations")]
        data: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// COCO bbox mAP of a results file, identical to pycocotools' COCOeval.
    CocoEval {
        /// Ground truth: a COCO instances JSON.
        #[arg(long)]
        annotations: PathBuf,
        /// Detections: a COCO results JSON list.
        #[arg(long)]
        detections: PathBuf,
        /// Print one JSON object with `stats` (pycocotools order) and `per_category_ap`.
        #[arg(long)]
        json: bool,
    },
    /// Images per second of inference (or of a training step with --train), and peak memory.
    Bench {
        /// The zoo's TOML config of the model (its weights are random: speed does not depend on them).
        #[arg(long, required_unless_present = "model", conflicts_with = "model")]
        config: Option<PathBuf>,
        /// Or a model of the Hub by name (its config only is read).
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        batch: usize,
        #[arg(long, default_value_t = 5, value_parser = at_least_one)]
        iters: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Time a full training step (forward, backward, AdamW update).
        #[arg(long)]
        train: bool,
        /// Time the training data loader alone over this class-folder set instead of the model.
        #[arg(long)]
        loader_data: Option<PathBuf>,
        /// DETR input height and width.
        #[arg(long, num_args = 2, default_values_t = [800, 1066], value_parser = at_least_one)]
        detr_size: Vec<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Training curves of one or more runs on one picture (PNG): loss, learning rate and
    /// validation score per epoch. Every training run also writes its own `curves.png`.
    Plot {
        /// `metrics.jsonl` files, or the run folders (`train.output_dir`) that hold them.
        #[arg(required = true)]
        metrics: Vec<PathBuf>,
        /// Names in the legend, one per run (default: each run's folder name).
        #[arg(long, num_args = 1..)]
        names: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// The devices this binary can run on here (each probed: its name and the float types it
    /// computes in), and the backends compiled in.
    Devices,
    /// The models of the Hugging Face Hub the zoo runs by name (`--model`), with their input
    /// size, parameter count and the accuracy upstream reports.
    Models {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
}

/// A count or size that must be at least 1 (a benchmark of no iterations, no images or a
/// zero-sized input measures nothing).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A point `x,y` of finite coordinates.
fn point(text: &str) -> Result<(f32, f32), String> {
    let parsed =
        text.split_once(',').and_then(|(x, y)| Some((x.trim().parse::<f32>().ok()?, y.trim().parse::<f32>().ok()?)));
    match parsed {
        Some((x, y)) if x.is_finite() && y.is_finite() => Ok((x, y)),
        _ => Err(format!("`{text}` is not a point x,y in pixels")),
    }
}

fn main() {
    keep_freed_memory();
    compute_on_main_thread();
    let cli = Cli::parse();
    if let Err(e) = check_env().and_then(|()| run(cli)) {
        // A reader that went away (`zoo classify ... | head`) ends the program quietly, as
        // command-line tools do.
        let broken_pipe = e
            .chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
        if broken_pipe {
            std::process::exit(0);
        }
        // Ctrl-C during training: the checkpoint is written, which is what the user asked for.
        if e.chain().any(|c| c.is::<zoo_train::engine::Interrupted>()) {
            eprintln!("{e:#}");
            std::process::exit(130);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `ZOO_ISA` and `ZOO_WINOGRAD` as the kernels will read them; `ZOO_ISA=avx2` on an AVX-512 CPU
/// needs a build whose matrix kernels have no AVX-512 (the gemm crate picks them at run time
/// whenever they are compiled in).
fn check_env() -> Result<()> {
    zoo_models::ops::winograd_from_env().map_err(anyhow::Error::msg)?;
    let isa = zoo_models::ops::isa_from_env().map_err(anyhow::Error::msg)?;
    #[cfg(all(feature = "avx512", target_arch = "x86_64"))]
    if isa == zoo_models::ops::Isa::Avx2 && std::is_x86_feature_detected!("avx512f") {
        anyhow::bail!(
            "ZOO_ISA=avx2: this zoo was built with the `avx512` feature, whose matrix kernels use AVX-512 on \
             this CPU; build it without: ZOO_FEATURES=flex just build"
        );
    }
    let _ = isa;
    Ok(())
}

/// A flag that the first Ctrl-C (or SIGTERM) sets, so that training finishes its step and writes
/// a checkpoint; a second one ends the program at once.
fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopped without a checkpoint of this epoch");
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step to write a checkpoint (Ctrl-C again to stop at once)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// Writes `text` to standard output; a failure (a closed pipe, a full disk) is an error rather
/// than `println!`'s panic.
fn emit(text: String) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).context("cannot write to standard output")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Classify { run, top_k, json } => {
            let device = run.device.select()?;
            let (cfg, config, weights) = run.source.resolve()?;
            let model = load_classifier(&cfg, &config, &weights, &device)?;
            let result = classify(&model, &cfg, &run.inputs(), top_k, &device)?;
            if json {
                emit(format!("{}\n", serde_json::to_string(&result)?))?;
            } else {
                emit(result.to_text())?;
            }
        }
        Command::Train { config, resume, record_batches, device } => {
            let mut cfg = ZooConfig::from_file(&config)?;
            let precision = device.precision.or(cfg.train.as_ref().map(|t| t.precision)).unwrap_or_default();
            let device = select_device(device.device.as_deref(), precision)?;
            if let Some(train) = &mut cfg.train
                && let Some(init) = &train.init_from
                && is_hub_name(init)
                && !init.exists()
            {
                let name = init.to_string_lossy().into_owned();
                let weights = Pretrained::from_hub(&name)
                    .and_then(|p| p.weights())
                    .with_context(|| format!("{}: train.init_from = \"{name}\"", config.display()))?;
                train.init_from = Some(weights);
            }
            let devices = devices_named(cfg.train.as_ref().map_or(&[][..], |t| &t.devices[..]), precision)
                .with_context(|| format!("config {}", config.display()))?;
            let stop = Some(stop_on_ctrl_c()?);
            let options = TrainOptions { resume, devices, stop, record_batches, ..Default::default() };
            let context = || format!("training {}", config.display());
            if let ModelConfig::Detr(_) = cfg.model {
                let report = train_detr(&cfg, &device, &options).with_context(context)?;
                emit(format!(
                    "best validation AP {:.3} at epoch {}; weights: {} (best), {} (last)\n",
                    report.best_ap,
                    report.best_epoch,
                    report.best_model.display(),
                    report.last_model.display()
                ))?;
            } else {
                let report = train_classifier(&cfg, &device, &options).with_context(context)?;
                emit(format!(
                    "best validation top-1 {:.2}% at epoch {}; weights: {} (best), {} (last)\n",
                    100.0 * report.best_top1,
                    report.best_epoch,
                    report.best_model.display(),
                    report.last_model.display()
                ))?;
            }
        }
        Command::Generate { dataset, out, train } => {
            let written = generate_demo_dataset(dataset, &out, train)?;
            emit(format!("wrote {}\n", written.display()))?;
        }
        Command::Demo { out, epochs, train_per_class, detr_epochs, device } => {
            let device = device.select()?;
            let options = DemoOptions { out, epochs, train_per_class, detr_epochs, quiet: false };
            run_demo(&options, &device)?;
        }
        Command::Detect { run, threshold, out, json } => {
            let device = run.device.select()?;
            let (cfg, config, weights) = run.source.resolve()?;
            let model = load_detr(&cfg, &config, &weights, &device)?;
            let (result, pictures) = detect(&model, &cfg, &config, &run.inputs(), threshold, &device)?;
            if let Some(dir) = out {
                if pictures.is_empty() {
                    bail!("--out draws on images: give --image, not --input-npy");
                }
                for path in draw_detections(&result, pictures, &dir)? {
                    eprintln!("wrote {}", path.display());
                }
            }
            if json {
                emit(format!("{}\n", serde_json::to_string(&result)?))?;
            } else {
                emit(result.to_text())?;
            }
        }
        Command::Attention { run, out, npy_out, threshold, points, patch } => {
            let device = run.device.select()?;
            let (cfg, config, weights) = run.source.resolve()?;
            let opts = AttentionOptions { out, npy_out, threshold, points, patch };
            let report = if let ModelConfig::Detr(_) = cfg.model {
                let model = load_detr(&cfg, &config, &weights, &device)?;
                detr_attention(&model, &cfg, &config, &run.inputs(), &opts, &device)?
            } else {
                let model = load_classifier(&cfg, &config, &weights, &device)?;
                classifier_attention(&model, &cfg, &run.inputs(), &opts, &device)?
            };
            let mut text: String = report.summary.iter().map(|l| format!("{l}\n")).collect();
            text.push_str(&format!("wrote {} files:\n", report.written.len()));
            text.extend(report.written.iter().map(|p| format!("  {}\n", p.display())));
            emit(text)?;
        }
        Command::Convert { source, out } => {
            if out.extension().and_then(|e| e.to_str()) != Some("bpk") {
                bail!("--out {}: the burnpack file name must end in .bpk", out.display());
            }
            let device = select_device(None, Precision::F32)?;
            let (cfg, config, weights) = source.resolve()?;
            let saved = match cfg.model {
                ModelConfig::Detr(_) => save_burnpack(&load_detr(&cfg, &config, &weights, &device)?, &out),
                _ => load_classifier(&cfg, &config, &weights, &device)?.save(&out),
            };
            saved.with_context(|| format!("converting {}", weights.display()))?;
            emit(format!("wrote {}\n", out.display()))?;
        }
        Command::Eval { source, annotations, images, results_out, data, json, device } => {
            let device = device.select()?;
            let (cfg, config, weights) = source.resolve()?;
            match (&cfg.model, annotations, images, data) {
                (ModelConfig::Detr(_), Some(annotations), Some(images), None) => {
                    let model = load_detr(&cfg, &config, &weights, &device)?;
                    let result =
                        eval_detr(&model, &cfg, &config, &annotations, &images, results_out.as_deref(), &device)?;
                    if json {
                        emit(format!("{}\n", serde_json::to_string(&result.to_json())?))?;
                    } else {
                        emit(format!("{}\n", result.summary()))?;
                    }
                }
                (ModelConfig::Detr(_), ..) => bail!("evaluating DETR needs --annotations and --images"),
                (_, None, None, Some(data)) => {
                    let r = eval_classifier(&cfg, &config, &weights, &data, &device)?;
                    if json {
                        emit(format!("{}\n", serde_json::to_string(&r)?))?;
                    } else {
                        emit(format!(
                            "{} images: top-1 {:.2}%, top-5 {:.2}%, loss {:.4}, {:.1} images/s\n",
                            r.images,
                            100.0 * r.top1,
                            100.0 * r.top5,
                            r.loss,
                            r.images_per_sec
                        ))?;
                    }
                }
                _ => bail!("evaluating a classifier needs --data <folder of class folders>"),
            }
        }
        Command::CocoEval { annotations, detections, json } => {
            let gt = CocoGroundTruth::from_file(&annotations)?;
            let dets = load_detections(&detections, &gt)?;
            let result = evaluate(&gt, &dets);
            if json {
                emit(format!("{}\n", serde_json::to_string(&result.to_json())?))?;
            } else {
                emit(format!("{}\n", result.summary()))?;
            }
        }
        Command::Bench { config, model, batch, iters, warmup, train, loader_data, detr_size, json, device } => {
            let device = device.select()?;
            let (cfg, config) = match (config, model) {
                (Some(config), _) => (ZooConfig::from_file(&config)?, config),
                (None, Some(name)) => {
                    let pretrained = Pretrained::from_hub(&name)?;
                    (pretrained.config, PathBuf::from(name))
                }
                (None, None) => bail!("give --config or --model"),
            };
            if let Some(data) = loader_data {
                let rate = bench_loader(&cfg, &data, batch)?;
                emit(format!("training loader over {}: {rate:.1} images/s\n", data.display()))?;
                return Ok(());
            }
            let options = BenchOptions { batch, iters, warmup, train, detr_size: (detr_size[0], detr_size[1]) };
            let r = bench(&cfg, &device, &options)?;
            if json {
                emit(format!("{}\n", serde_json::to_string(&r)?))?;
            } else {
                emit(format!(
                    "{} {} on {}: batch {} of {:?}: {:.2} images/s, {:.1} ms per batch, peak RSS {:.0} MiB\n",
                    config.display(),
                    r.mode,
                    r.device,
                    r.batch,
                    r.input,
                    r.images_per_sec,
                    r.ms_per_batch,
                    r.peak_rss_mb
                ))?;
            }
        }
        Command::Plot { metrics, names, out } => {
            if !names.is_empty() && names.len() != metrics.len() {
                bail!("--names gives {} names for {} runs", names.len(), metrics.len());
            }
            let runs = metrics
                .iter()
                .enumerate()
                .map(|(i, path)| {
                    let file = if path.is_dir() { path.join("metrics.jsonl") } else { path.clone() };
                    let folder = file.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
                    let name = names.get(i).cloned().or(folder).unwrap_or_else(|| format!("run {}", i + 1));
                    Ok(zoo_train::plot::Curves { name, epochs: zoo_train::plot::read_metrics(&file)? })
                })
                .collect::<Result<Vec<_>>>()?;
            zoo_train::plot::plot(&runs, &out)?;
            emit(format!("wrote {}\n", out.display()))?;
        }
        Command::Devices => emit(list_devices())?,
        Command::Models { json } => emit(zoo_infer::pretrained::list_models(json)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_counts_and_sizes_must_be_positive() {
        let bench = |extra: &[&str]| {
            let args = ["zoo", "bench", "--config", "c.toml"].iter().chain(extra);
            Cli::try_parse_from(args).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(bench(&[]).is_ok());
        for extra in [&["--iters", "0"][..], &["--batch", "0"], &["--detr-size", "0", "0"]] {
            let err = bench(extra).unwrap_err();
            assert!(err.contains(extra[0]), "{extra:?}: {err}");
        }
        assert!(bench(&["--iters", "0"]).unwrap_err().contains("must be at least 1"));
    }
}
