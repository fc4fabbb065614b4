//! Three consecutive training steps of the zoo's loop against timm's (scripts/
//! make_train_step_fixtures.py): the tiny ViT fixture, the same batch, label-smoothed cross
//! entropy, backward, global gradient-norm clipping, AdamW with the no-decay group and the
//! warmup-cosine learning rate per step. Each step's loss and learning rate, and every parameter
//! after the third step, must agree to 1e-5 (relative). The same for the tiny DETR against
//! facebookresearch/detr's set loss over every decoder layer (transformers' port of the
//! criterion on facebookresearch's auxiliary outputs) with detr's optimizer: a backbone group at
//! its own learning rate, the stem and layer1 frozen, clipping at 0.1.
//!
//! With `ZOO_STEP_PARITY_DIR` set, the cases are its `vit/` and `detr/` folders instead of the tiny
//! fixtures (scripts/step_parity_full.py makes ViT-B/16 and DETR-R50 ones and runs this).

use std::path::{Path, PathBuf};

use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, bridge};
use zoo_datasets::DetrTarget;
use zoo_models::Classifier;
use zoo_models::resnet::ResNet;
use zoo_models::{ModelConfig, load_weights};
use zoo_train::ZooConfig;
use zoo_train::classification::{classifier_param_groups, classifier_step};
use zoo_train::detection::{detr_param_groups, detr_step};
use zoo_train::detr_loss::{LayerMatching, SetCriterion};
use zoo_train::mix::smoothed_one_hot;
use zoo_train::optimizer::{adamw, lr_scheduler, optimizer_step, param_group};

/// The relative tolerance of losses and parameters: 1e-5, or `ZOO_STEP_PARITY_TOLERANCE` if larger
/// (scripts/step_parity_full.py sets it to twice the spread between two runs of the reference
/// itself where that exceeds 1e-5).
fn tolerance() -> f64 {
    let given = std::env::var("ZOO_STEP_PARITY_TOLERANCE").ok().map(|t| t.parse::<f64>().expect("a number"));
    given.unwrap_or(0.0).max(1e-5)
}

/// A file of the ViT (`vit_tiny/...`) or DETR (`detr_tiny/...`) case.
fn fixture(path: &str) -> PathBuf {
    match std::env::var_os("ZOO_STEP_PARITY_DIR") {
        Some(dir) => {
            let (case, rest) = path.split_once('/').expect("a case and a file");
            Path::new(&dir).join(case.trim_end_matches("_tiny")).join(rest)
        }
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(path),
    }
}

fn read_npy<T: npyz::Deserialize>(path: &Path) -> (Vec<usize>, Vec<T>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    (npy.shape().iter().map(|&d| d as usize).collect(), npy.into_vec().unwrap())
}

/// Every float parameter by name.
fn parameters<M: ModuleSnapshot>(model: &M) -> Vec<(String, Vec<f32>)> {
    model
        .collect(None, None, false)
        .into_iter()
        .map(|pack| {
            let name = pack.name.clone();
            (name, bridge::into_data(pack).unwrap().convert::<f32>().try_to_vec::<f32>().unwrap())
        })
        .collect()
}

/// The largest `||ours - reference|| / ||reference||` over the parameters, and its name. The key
/// third of a fused q/k/v bias (ViT's `qkv.bias`, DETR's `in_proj_bias`) has no gradient in exact
/// arithmetic (a constant added to one query's scores leaves its softmax unchanged): both sides
/// hold rounding noise there, which AdamW turns into steps of up to the learning rate. It is
/// checked apart, against `key_bias_bound` (twice the learning rates summed over the steps).
fn compare_parameters(ours: &[(String, Vec<f32>)], reference: &[(String, Vec<f32>)], lr_sum: f32) -> (f32, String) {
    assert_eq!(ours.len(), reference.len());
    let relative = |a: &[f32], b: &[f32]| {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
        diff / b.iter().map(|y| y * y).sum::<f32>().sqrt().max(f32::MIN_POSITIVE)
    };
    let mut worst = (0.0f32, String::new());
    for ((name, a), (ref_name, b)) in ours.iter().zip(reference) {
        assert_eq!(name, ref_name);
        let (a, b) = if name.ends_with("qkv.bias") || name.ends_with("in_proj_bias") {
            let d = a.len() / 3;
            let moved = a[d..2 * d].iter().zip(&b[d..2 * d]).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(moved <= 2.0 * lr_sum, "{name}: key bias {moved} apart, more than AdamW's steps can move it");
            ([&a[..d], &a[2 * d..]].concat(), [&b[..d], &b[2 * d..]].concat())
        } else {
            (a.clone(), b.clone())
        };
        let relative = relative(&a, &b);
        if relative > worst.0 {
            worst = (relative, name.clone());
        }
    }
    worst
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
    let classes = config.model.num_classes();
    let targets = smoothed_one_hot(&labels, classes, cfg.label_smoothing);
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [labels.len(), classes]), &device);

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
        assert!(loss_diff < tolerance(), "step {}: loss {loss} against timm's {loss_ref}", step + 1);
        assert!(lr_diff < 1e-12, "step {}: lr {lr} against timm's {lr_ref}", step + 1);
    }

    let reference = Classifier::init(&config.model, &Device::flex())
        .unwrap()
        .load(&fixture("vit_tiny/train_steps/model.safetensors"))
        .unwrap();
    let (reference, ours) = (parameters(&reference), parameters(&model.valid()));
    let worst = compare_parameters(&ours, &reference, lrs.iter().sum::<f64>() as f32);
    println!("after 3 steps: every parameter within {:e} of timm's (relative, worst {})", worst.0, worst.1);
    assert!((worst.0 as f64) < tolerance(), "{} is {:e} off timm's after 3 steps", worst.1, worst.0);
}

/// Per decoder layer, per image, the matched `(query, target)` pairs.
type Matching = Vec<LayerMatching>;

#[test]
fn three_detr_training_steps_equal_transformers() {
    // The script's recipe: lr 1e-4, backbone 1e-5, weight decay 1e-4, clipping at 0.1, the stem
    // and layer1 frozen, the learning rate constant (lr_drop at the last epoch), no dropout.
    let model_toml = std::fs::read_to_string(fixture("detr_tiny/config.toml")).unwrap();
    let config = ZooConfig::from_toml_str(&format!(
        "{model_toml}dropout = 0.0\n[train]\ntrain_dir = \"unused\"\nval_dir = \"unused\"\noutput_dir = \"unused\"\n\
         train_annotations = \"unused\"\nval_annotations = \"unused\"\nepochs = 10\nbatch_size = 2\nlr = 1e-4\n\
         backbone_lr = 1e-5\nweight_decay = 1e-4\ngrad_clip = 0.1\nlr_drop = 10\nfrozen_backbone_parts = 2\n"
    ))
    .unwrap();
    let cfg = config.train.as_ref().unwrap();
    let ModelConfig::Detr(detr) = &config.model else { panic!("detr_tiny is a DETR config") };
    let device = Device::flex().autodiff();
    let mut model = load_weights(detr.init(&device), &fixture("detr_tiny/model.safetensors")).unwrap();
    let groups = detr_param_groups(cfg);
    let frozen = groups.frozen.clone().expect("the stem and layer1 are frozen");
    model = model.set_require_grad_group(param_group(&frozen).unwrap(), false);
    let (shape, x) = read_npy::<f32>(&fixture("detr_tiny/input.npy"));
    let images = Tensor::<4>::from_data(TensorData::new(x, shape), &device);
    let (shape, valid) = read_npy::<u8>(&fixture("detr_tiny/valid_mask.npy"));
    let padding: Vec<bool> = valid.iter().map(|v| *v == 0).collect();
    let mask = Tensor::<3, Bool>::from_data(TensorData::new(padding, shape), &device);
    let targets = vec![
        DetrTarget { labels: vec![1, 3], boxes: vec![[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]] },
        DetrTarget { labels: vec![2], boxes: vec![[0.5, 0.5, 0.4, 0.4]] },
    ];

    let mut optim = adamw(cfg, &groups).unwrap();
    let mut sched = lr_scheduler(cfg, &groups, 1).unwrap();
    let (_, losses) = read_npy::<f32>(&fixture("detr_tiny/train_steps/losses.npy"));
    // The assignment the reference's loss used: with random weights the queries are nearly alike
    // and their costs close (within 1e-5). The zoo's matcher must find the same one or one that
    // costs the same; the step then follows the reference's, so that the losses are comparable.
    let text = std::fs::read_to_string(fixture("detr_tiny/train_steps/matchings.json")).unwrap();
    let matchings: Vec<Matching> = serde_json::from_str(&text).unwrap();
    let criterion = SetCriterion::default();
    // The largest relative loss difference and its step (checked after the parameters are shown).
    let mut worst_loss = (0.0f64, 0);
    for (step, &loss_ref) in losses.iter().enumerate() {
        let outputs = model.forward_all(images.clone(), mask.clone());
        let reference = &matchings[step];
        let mut ties = 0;
        for (layer, (out, reference)) in outputs.iter().zip(reference).enumerate() {
            let ours = criterion.match_layer(out, &targets).unwrap();
            let costs = criterion.cost_matrices(out, &targets).unwrap();
            for (image, ((ours, reference), cost)) in ours.iter().zip(reference).zip(&costs).enumerate() {
                if ours == reference {
                    continue;
                }
                // Another assignment is only allowed where it is a tie: both optimal under the
                // zoo's costs, to float32 rounding.
                let n = targets[image].labels.len();
                let total = |pairs: &[(usize, usize)]| pairs.iter().map(|&(q, t)| cost[q * n + t] as f64).sum::<f64>();
                let (a, b) = (total(ours), total(reference));
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "step {}, layer {layer}, image {image}: the reference's assignment {reference:?} costs {b}, the \
                     zoo's {ours:?} {a}: not a tie",
                    step + 1
                );
                ties += 1;
            }
        }
        if ties > 0 {
            println!("step {}: {ties} tied assignments (costs equal to 1e-5) follow the reference's", step + 1);
        }
        let mut grads = GradientsAccumulator::new();
        let (loss, _) =
            detr_step(&model, &criterion, images.clone(), mask.clone(), &targets, Some(reference), 1.0, &mut grads)
                .unwrap();
        (model, _) = optimizer_step(model, &mut optim, &mut sched, &mut grads, cfg.grad_clip);
        let loss_diff = (loss - loss_ref as f64).abs() / loss_ref as f64;
        println!("step {}: loss {loss} (reference {loss_ref}, {loss_diff:e} relative)", step + 1);
        if loss_diff > worst_loss.0 {
            worst_loss = (loss_diff, step + 1);
        }
    }

    let reference =
        load_weights(detr.init(&Device::flex()), &fixture("detr_tiny/train_steps/model.safetensors")).unwrap();
    let initial =
        parameters(&load_weights(detr.init(&Device::flex()), &fixture("detr_tiny/model.safetensors")).unwrap());
    let ours = parameters(&model.valid());
    // The frozen stem and layer1 have not moved.
    let frozen_parts: Vec<String> = ResNet::freeze_groups()[..cfg.frozen_backbone_parts]
        .concat()
        .iter()
        .map(|p| format!("backbone.{p}."))
        .collect();
    let kept =
        ours.iter().zip(&initial).filter(|((name, _), _)| frozen_parts.iter().any(|p| name.contains(p.as_str())));
    assert!(kept.clone().count() > 0, "some parameters are frozen");
    for ((name, a), (_, b)) in kept {
        assert_eq!(a, b, "{name} is frozen but changed");
    }
    let worst = compare_parameters(&ours, &parameters(&reference), 3e-4);
    println!("after 3 steps: every parameter within {:e} of the reference's (relative, worst {})", worst.0, worst.1);
    let (step, loss_diff) = (worst_loss.1, worst_loss.0);
    assert!(loss_diff < tolerance(), "step {step}: the loss is {loss_diff:e} off the reference's (relative)");
    assert!((worst.0 as f64) < tolerance(), "{} is {:e} off the reference's after 3 steps", worst.1, worst.0);
}
