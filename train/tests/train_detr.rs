//! DETR training on the generated objects dataset: a tiny DETR trained from scratch fits a small
//! set (its loss falls to under a third and its COCO AP on those images rises from about 0 to over
//! 0.4); an interrupted run resumes exactly; bad annotation files and images give clear errors.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use zoo_datasets::generate_detection::generate_objects;
use zoo_models::ModelConfig;
use zoo_train::TrainOptions;
use zoo_train::ZooConfig;
use zoo_train::detection::train_detr;
use zoo_train::engine::Interrupted;

const DEMO: &str = include_str!("../../configs/demo_detr.toml");

/// Burn's random generator is per process: tests that train run one at a time so that each
/// run's initialisation and dropout draw the same numbers every time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(data: &Path, out: &Path, epochs: usize) -> ZooConfig {
    let mut config = ZooConfig::from_toml_str(DEMO).unwrap();
    let train = config.train.as_mut().unwrap();
    train.train_dir = data.join("train");
    train.val_dir = data.join("val");
    train.train_annotations = Some(data.join("annotations/instances_train.json"));
    train.val_annotations = Some(data.join("annotations/instances_val.json"));
    train.output_dir = out.to_path_buf();
    train.epochs = epochs;
    train.lr_drop = Some(epochs);
    config
}

/// Stopping after one epoch and resuming gives the second epoch of the uninterrupted run.
#[test]
fn detr_resume_continues_exactly() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate_objects(&data, 16, 4, 9).unwrap();
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    let mut straight = config(&data, &dir.path().join("straight"), 2);
    // Dropout and the random crop must resume exactly too.
    let ModelConfig::Detr(detr) = &mut straight.model else { unreachable!() };
    detr.dropout = 0.1;
    straight.train.as_mut().unwrap().detection.crop_scales = vec![100, 120];
    let full = train_detr(&straight, &Device::flex(), &quiet).unwrap();

    let mut resumed = straight.clone();
    resumed.train.as_mut().unwrap().output_dir = dir.path().join("resumed");
    let first = train_detr(&resumed, &Device::flex(), &TrainOptions { stop_after: Some(1), ..quiet.clone() }).unwrap();
    assert_eq!(first.epochs.len(), 1);
    let second = train_detr(&resumed, &Device::flex(), &TrainOptions { resume: true, ..quiet.clone() }).unwrap();
    assert_eq!(second.epochs.len(), 1);
    let (a, b) = (&full.epochs[1], &second.epochs[0]);
    assert_eq!((a.epoch, a.train_loss, a.loss_bbox, a.val_ap), (b.epoch, b.train_loss, b.loss_bbox, b.val_ap));
    assert!(second.last_model.is_file() && dir.path().join("resumed/checkpoints/epoch-0002/model.bpk").is_file());

    // Interrupted after the first optimizer step (Ctrl-C) and resumed from the next batch:
    // dropout is seeded per batch, so both epochs equal the uninterrupted run's.
    let mut interrupted = straight.clone();
    interrupted.train.as_mut().unwrap().output_dir = dir.path().join("interrupted");
    let stop = Some(Arc::new(AtomicBool::new(true)));
    let err = train_detr(&interrupted, &Device::flex(), &TrainOptions { stop, ..quiet.clone() }).unwrap_err();
    assert!(err.downcast_ref::<Interrupted>().is_some_and(|i| i.batch == 1), "{err:#}");
    let rest = train_detr(&interrupted, &Device::flex(), &TrainOptions { resume: true, ..quiet }).unwrap();
    for (a, b) in full.epochs.iter().zip(&rest.epochs) {
        assert_eq!((a.epoch, a.train_loss, a.loss_bbox, a.val_ap), (b.epoch, b.train_loss, b.loss_bbox, b.val_ap));
    }
}

#[test]
fn detr_training_rejects_bad_sets() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate_objects(&data, 2, 1, 9).unwrap();
    // Category ids up to 3 do not fit 3 classes (ids are the class indices, as in DETR).
    let mut small = config(&data, &dir.path().join("run"), 1);
    let ModelConfig::Detr(detr) = &mut small.model else { unreachable!() };
    detr.num_classes = 3;
    let err = format!("{:#}", train_detr(&small, &Device::flex(), &TrainOptions::default()).unwrap_err());
    assert!(
        err.contains("instances_train.json") && err.contains("category id 3") && err.contains("num_classes = 3"),
        "{err}"
    );

    // A corrupt image is named.
    std::fs::write(data.join("train/000001.png"), b"not a png").unwrap();
    let err = format!(
        "{:#}",
        train_detr(&config(&data, &dir.path().join("run2"), 1), &Device::flex(), &TrainOptions::default()).unwrap_err()
    );
    assert!(err.contains("000001.png"), "{err}");

    // A detector's [train] without annotation files is a config error.
    let text = DEMO.replace("train_annotations = ", "# ");
    let err = ZooConfig::from_toml_str(&text).unwrap_err();
    assert!(err.contains("train_annotations"), "{err}");
}

/// Sixteen images without augmentation, scored on themselves: the whole path (targets, matching,
/// losses, gradients, evaluation) must let DETR fit them.
#[test]
fn tiny_detr_fits_a_small_set() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate_objects(&data, 16, 1, 11).unwrap();
    let epochs: usize = std::env::var("ZOO_DETR_FIT_EPOCHS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut config = config(&data, &dir.path().join("run"), epochs);
    let train = config.train.as_mut().unwrap();
    train.val_dir = train.train_dir.clone();
    train.val_annotations = train.train_annotations.clone();
    train.hflip = 0.0;
    train.detection.scales = vec![128];
    train.detection.crop_scales = vec![];
    let report = train_detr(&config, &Device::flex(), &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    for m in report.epochs.iter().step_by(5) {
        eprintln!(
            "epoch {:3}: loss {:.3} (ce {:.3} L1 {:.3} GIoU {:.3}) AP {:.3} AP50 {:.3}",
            m.epoch, m.train_loss, m.loss_ce, m.loss_bbox, m.loss_giou, m.val_ap, m.val_ap50
        );
    }
    let first = &report.epochs[0];
    assert!(
        report.epochs.last().unwrap().train_loss < 0.3 * first.train_loss,
        "loss {} -> {}",
        first.train_loss,
        report.epochs.last().unwrap().train_loss
    );
    assert!(first.val_ap < 0.05 && report.best_ap > 0.4, "AP {} -> best {}", first.val_ap, report.best_ap);
}
