//! Batches for classification, decoded and augmented on all cores in a background thread so
//! that the model does not wait. Every epoch's order and augmentations follow from
//! `(seed, epoch)`, so a resumed run sees exactly the batches it would have seen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};

use image::RgbImage;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use zoo_datasets::{DataError, EvalTransform, ImageFolder, TrainTransform, load_rgb};

use crate::mix::{MixConfig, mix_batch, smoothed_one_hot};

/// One batch on the host.
pub struct HostBatch {
    /// `[B, 3, S, S]` normalised values.
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// `[B, classes]` soft targets (mixed and smoothed for training, one-hot for validation).
    pub targets: Vec<f32>,
}

#[derive(Clone)]
pub enum Augment {
    Train { transform: TrainTransform, mix: MixConfig },
    Eval(EvalTransform),
}

/// A split's samples and how to turn them into batches.
#[derive(Clone)]
pub struct Loader {
    pub samples: Arc<Vec<(PathBuf, usize)>>,
    pub classes: usize,
    pub batch_size: usize,
    pub size: usize,
    pub augment: Augment,
    pub seed: u64,
    pub skip_bad_images: bool,
    /// Images that could not be decoded and were skipped.
    pub skipped: Arc<AtomicUsize>,
}

/// The training order of an epoch's `n` samples: a shuffle that follows from `(seed, epoch)`.
pub(crate) fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng_for(seed, epoch, usize::MAX));
    order
}

/// A per-(seed, epoch, index) random generator.
pub(crate) fn rng_for(seed: u64, epoch: usize, index: usize) -> StdRng {
    let mix = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((epoch as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add((index as u64).wrapping_mul(0x94D0_49BB_1331_11EB));
    StdRng::seed_from_u64(mix)
}

impl Loader {
    pub fn new(
        folder: &ImageFolder,
        batch_size: usize,
        size: usize,
        augment: Augment,
        seed: u64,
        skip_bad_images: bool,
    ) -> Self {
        Self {
            samples: Arc::new(folder.samples.clone()),
            classes: folder.classes.len(),
            batch_size,
            size,
            augment,
            seed,
            skip_bad_images,
            skipped: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.samples.len().div_ceil(self.batch_size)
    }

    /// The sample order of an epoch: shuffled for training, as listed for evaluation.
    fn order(&self, epoch: usize) -> Vec<usize> {
        match self.augment {
            Augment::Train { .. } => epoch_order(self.samples.len(), self.seed, epoch),
            Augment::Eval(_) => (0..self.samples.len()).collect(),
        }
    }

    /// The image files of an epoch, in the order its batches take them.
    pub fn files(&self, epoch: usize) -> Vec<PathBuf> {
        self.order(epoch).into_iter().map(|i| self.samples[i].0.clone()).collect()
    }

    /// Sample `index` transformed; with `skip_bad_images`, an undecodable image is reported,
    /// counted and replaced by the next decodable one.
    fn load(&self, epoch: usize, index: usize) -> Result<(Vec<f32>, usize), DataError> {
        let (used, img) =
            decode_or_skip(self.samples.len(), index, self.skip_bad_images, &self.skipped, |i| &self.samples[i].0)?;
        let values = match &self.augment {
            Augment::Train { transform, .. } => transform.apply(&img, &mut rng_for(self.seed, epoch, index)),
            Augment::Eval(t) => t.apply(&img),
        };
        Ok((values, self.samples[used].1))
    }

    fn batch(&self, epoch: usize, batch_index: usize, indices: &[usize]) -> Result<HostBatch, DataError> {
        let loaded = indices.par_iter().map(|&i| self.load(epoch, i)).collect::<Result<Vec<_>, _>>()?;
        let labels: Vec<usize> = loaded.iter().map(|(_, l)| *l).collect();
        let mut images: Vec<f32> = loaded.into_iter().flat_map(|(v, _)| v).collect();
        let targets = match &self.augment {
            Augment::Train { mix, .. } => {
                let mut rng = rng_for(self.seed ^ 0x5EED, epoch, batch_index);
                mix_batch(&mut images, &labels, self.classes, self.size, mix, &mut rng)
            }
            Augment::Eval(_) => smoothed_one_hot(&labels, self.classes, 0.0),
        };
        Ok(HostBatch { images, labels, targets })
    }

    /// The epoch's batches from batch `first` on, prepared ahead in a background thread (two in
    /// flight).
    pub fn epoch(&self, epoch: usize, first: usize) -> Receiver<Result<HostBatch, DataError>> {
        let this = self.clone();
        prefetch(self.order(epoch), self.batch_size, first, move |b, chunk| this.batch(epoch, b, chunk))
    }
}

/// Decodes sample `index` (of `n`, at `path_of(i)`), or with `skip` the next decodable one,
/// reporting and counting each skipped file; returns the index used and the image.
pub(crate) fn decode_or_skip<'a>(
    n: usize,
    index: usize,
    skip: bool,
    skipped: &AtomicUsize,
    path_of: impl Fn(usize) -> &'a Path,
) -> Result<(usize, RgbImage), DataError> {
    for attempt in 0..n {
        let i = (index + attempt) % n;
        match load_rgb(path_of(i)) {
            Ok(img) => return Ok((i, img)),
            Err(e) if skip => {
                skipped.fetch_add(1, Ordering::Relaxed);
                eprintln!("warning: skipping {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Err(DataError::Invalid("no image of the dataset could be decoded".into()))
}

/// Makes the batches of `order` (in chunks of `batch_size`) from batch `first` on with
/// `make(batch_index, indices)` in a background thread, two ahead of the consumer; stops at the
/// first error.
pub(crate) fn prefetch<T: Send + 'static>(
    order: Vec<usize>,
    batch_size: usize,
    first: usize,
    make: impl Fn(usize, &[usize]) -> Result<T, DataError> + Send + 'static,
) -> Receiver<Result<T, DataError>> {
    let (tx, rx) = sync_channel(2);
    std::thread::spawn(move || {
        for (b, chunk) in order.chunks(batch_size).enumerate().skip(first) {
            let batch = make(b, chunk);
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                break;
            }
        }
    });
    rx
}
