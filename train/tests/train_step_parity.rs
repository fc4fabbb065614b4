//! Three consecutive training steps of the zoo's loop against timm's (scripts/
//! make_train_step_fixtures.py): the tiny ViT fixture, the same batch, label-smoothed cross
//! entropy, backward, global gradient-norm clipping, AdamW with the no-decay group and the
//! warmup-cosine learning rate per step. Each step's loss and learning rate, and every parameter
//! after the third step, must agree to 1e-5 (relative).

use std::path::{Path, PathBuf};

use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, bridge};
use zoo_models::Classifier;
use zoo_train::ZooConfig;
use zoo_train::classification::{classifier_param_groups, classifier_step};
use zoo_train::mix::smoothed_one_hot;
use zoo_train::optimizer::{adamw, lr_scheduler, optimizer_step};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(path)
}

fn read_npy<T: npyz::Deserialize>(path: &Path) -> (Vec<usize>, Vec<T>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    (npy.shape().iter().map(|&d| d as usize).collect(), npy.into_vec().unwrap())
}

/// Every float parameter by name.
fn parameters(model: &Classifier) -> Vec<(String, Vec<f32>)> {
    model
        .collect(None, None, false)
        .into_iter()
        .map(|pack| {
            let name = pack.name.clone();
            (name, bridge::into_data(pack).unwrap().convert::<f32>().try_to_vec::<f32>().unwrap())
        })
        .collect()
}

#[test]
fn three_vit_training_steps_equal_timms() {
    // The script's hyper-parameters: 5 epochs of 2 steps (batch 2 of 4 images), 1 warmup epoch.
    let model_toml = std::fs::read_to_string(fixture("vit_tiny/config.toml")).unwrap();
    let config = ZooConfig::from_toml_str(&format!(
        "{model_toml}\n[train]\ntrain_dir = \"unused\"\nval_dir = \"unused\"\noutput_dir = \"unused\"\nepochs = 5\n\
         batch_size = 2\nlr = 1e-3\nmin_lr = 1e-5\nwarmup_epochs = 1\nweight_decay = 0.05\ngrad_clip = 0.5\n\
         label_smoothing = 0.1\n"
    ))
    .unwrap();
    let cfg = config.train.as_ref().unwrap();
    let device = Device::flex().autodiff();
    let mut model =
        Classifier::init(&config.model, &device).unwrap().load(&fixture("vit_tiny/model.safetensors")).unwrap();
    let (shape, x) = read_npy::<f32>(&fixture("vit_tiny/input.npy"));
    let images = Tensor::<4>::from_data(TensorData::new(x, shape), &device);
    let (_, labels) = read_npy::<i64>(&fixture("vit_tiny/train_steps/labels.npy"));
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let targets = smoothed_one_hot(&labels, 10, cfg.label_smoothing);
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [labels.len(), 10]), &device);

    let groups = classifier_param_groups(&model);
    let mut optim = adamw(cfg, &groups).unwrap();
    let mut sched = lr_scheduler(cfg, &groups, 2).unwrap();
    let (_, losses) = read_npy::<f32>(&fixture("vit_tiny/train_steps/losses.npy"));
    let (_, lrs) = read_npy::<f64>(&fixture("vit_tiny/train_steps/lrs.npy"));
    for (step, (&loss_ref, &lr_ref)) in losses.iter().zip(&lrs).enumerate() {
        let mut grads = GradientsAccumulator::new();
        let loss = classifier_step(&model, images.clone(), targets.clone(), 1.0, &mut grads);
        let lr;
        (model, lr) = optimizer_step(model, &mut optim, &mut sched, &mut grads, cfg.grad_clip);
        let loss_diff = (loss - loss_ref as f64).abs() / loss_ref as f64;
        let lr_diff = (lr - lr_ref).abs() / lr_ref;
        println!(
            "step {}: loss {loss} (timm {loss_ref}, {loss_diff:e} relative), lr {lr:e} (timm {lr_ref:e})",
            step + 1
        );
        assert!(loss_diff < 1e-5, "step {}: loss {loss} against timm's {loss_ref}", step + 1);
        assert!(lr_diff < 1e-12, "step {}: lr {lr} against timm's {lr_ref}", step + 1);
    }

    let reference = Classifier::init(&config.model, &Device::flex())
        .unwrap()
        .load(&fixture("vit_tiny/train_steps/model.safetensors"))
        .unwrap();
    let reference = parameters(&reference);
    let ours = parameters(&model.valid());
    assert_eq!(ours.len(), reference.len());
    let relative = |a: &[f32], b: &[f32]| {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
        diff / b.iter().map(|y| y * y).sum::<f32>().sqrt()
    };
    let mut worst = (0.0f32, String::new());
    for ((name, a), (ref_name, b)) in ours.iter().zip(&reference) {
        assert_eq!(name, ref_name);
        // ||ours - timm|| / ||timm|| per tensor. The key third of a fused qkv bias has no
        // gradient in exact arithmetic (a constant added to one query's scores leaves its softmax
        // unchanged): both sides hold rounding noise there, which AdamW turns into steps of up to
        // the learning rate. It is compared apart, against that bound.
        let (a, b) = if name.ends_with("attn.qkv.bias") {
            let d = a.len() / 3;
            let moved = a[d..2 * d].iter().zip(&b[d..2 * d]).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            let bound = lrs.iter().sum::<f64>() as f32 * 2.0;
            assert!(moved <= bound, "{name}: key bias {moved} apart, more than AdamW's steps can move it");
            ([&a[..d], &a[2 * d..]].concat(), [&b[..d], &b[2 * d..]].concat())
        } else {
            (a.clone(), b.clone())
        };
        let relative = relative(&a, &b);
        if relative > worst.0 {
            worst = (relative, name.clone());
        }
    }
    println!("after 3 steps: every parameter within {:e} of timm's (relative, worst {})", worst.0, worst.1);
    assert!(worst.0 < 1e-5, "{} is {:e} off timm's after 3 steps", worst.1, worst.0);
}
