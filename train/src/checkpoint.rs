//! Training checkpoints: the model (burnpack), the optimizer state and the progress (the
//! learning-rate schedule is a function of the step count), written to a temporary folder that
//! is renamed into place, so a checkpoint on disk is always whole. The progress records the
//! sha256 of the other two files and of `best.bpk`, which a resumed run checks: a damaged file,
//! or one copied in from another checkpoint, is an error rather than a run that diverges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the loop needs besides the tensors to continue where it stopped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the next epoch already trained: non-zero in a checkpoint written when a run
    /// was interrupted mid-epoch (Ctrl-C), which resumes with the batch after them.
    #[serde(default)]
    pub batch: usize,
    /// The interrupted epoch's training totals so far (its loss sums), so that its line in
    /// `metrics.jsonl` covers the whole epoch.
    #[serde(default)]
    pub partial_totals: Option<serde_json::Value>,
    /// Optimizer steps taken.
    pub step: usize,
    /// The best validation score so far (top-1 for classifiers, AP for detectors).
    #[serde(alias = "best_top1")]
    pub best_score: f64,
    pub best_epoch: usize,
    /// The batches of an epoch and the batches per optimizer step, which fix the schedule: a
    /// run resumed with another batch size would follow another one.
    #[serde(default)]
    pub batches_per_epoch: Option<usize>,
    #[serde(default)]
    pub grad_accum: Option<usize>,
    /// sha256 of the checkpoint's files, by name.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    /// sha256 of `best.bpk` (a copy of the best epoch's `model.bpk`).
    #[serde(default)]
    pub best_sha256: Option<String>,
}

/// The sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

pub const MODEL: &str = "model.bpk";
pub const OPTIMIZER: &str = "optimizer.bpk";
pub const PROGRESS: &str = "progress.json";
/// The weights of the best validation score, in the output folder.
pub const BEST: &str = "best.bpk";

/// The folder of the checkpoint after `epoch` epochs and `batch` batches of the next one:
/// `epoch-NNNN`, or `epoch-NNNN-batch-NNNNNN` for a run interrupted mid-epoch.
pub fn checkpoint_dir(output: &Path, epoch: usize, batch: usize) -> PathBuf {
    output.join("checkpoints").join(checkpoint_name(epoch, batch))
}

fn checkpoint_name(epoch: usize, batch: usize) -> String {
    match batch {
        0 => format!("epoch-{epoch:04}"),
        batch => format!("epoch-{epoch:04}-batch-{batch:06}"),
    }
}

/// `(epoch, batch)` of a checkpoint folder's name.
fn parse_checkpoint_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("epoch-")?;
    match rest.split_once("-batch-") {
        Some((epoch, batch)) => Some((epoch.parse().ok()?, batch.parse().ok()?)),
        None => Some((rest.parse().ok()?, 0)),
    }
}

/// Writes a checkpoint folder atomically: `write` fills a temporary folder, the sha256 of each
/// file it wrote goes into the progress (`progress.sha256`), and the folder is renamed to
/// `epoch-NNNN`. When the epoch is the best so far (`best_epoch == epoch`), the model's hash is
/// recorded as `best.bpk`'s, which [`export_best`] then writes. Checkpoints of later steps (an
/// earlier run's) and older ones beyond the last `keep` are removed.
pub fn save(
    output: &Path,
    progress: &mut Progress,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(output, progress.epoch, progress.batch);
    let parent = dir.parent().expect("checkpoint folders have a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp", checkpoint_name(progress.epoch, progress.batch)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write(&tmp)?;
    progress.sha256.clear();
    for entry in std::fs::read_dir(&tmp).with_context(|| format!("cannot read {}", tmp.display()))? {
        let path = entry?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            progress.sha256.insert(name.to_string(), sha256_file(&path)?);
        }
    }
    if progress.best_epoch == progress.epoch && progress.batch == 0 {
        progress.best_sha256 = progress.sha256.get(MODEL).cloned();
    }
    let progress_path = tmp.join(PROGRESS);
    std::fs::write(&progress_path, serde_json::to_string_pretty(progress)?)
        .with_context(|| format!("cannot write {}", progress_path.display()))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move checkpoint into {}", dir.display()))?;
    let mut all = list(output)?;
    // Checkpoints of later steps than this one are an earlier run's (a fresh run in an old
    // output folder): they go first, as metrics.jsonl's later epochs do.
    while all.last().is_some_and(|(step, _)| *step > (progress.epoch, progress.batch)) {
        let (_, stale) = all.pop().expect("a checkpoint");
        std::fs::remove_dir_all(&stale).with_context(|| format!("cannot remove {}", stale.display()))?;
    }
    while all.len() > keep {
        let (_, old) = all.remove(0);
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(dir)
}

/// `best.bpk` in `output`: a copy of checkpoint `dir`'s model, written atomically.
pub fn export_best(output: &Path, dir: &Path) -> Result<PathBuf> {
    let best = output.join(BEST);
    let tmp = output.join(format!(".{BEST}.tmp-{}", std::process::id()));
    let source = dir.join(MODEL);
    std::fs::copy(&source, &tmp).with_context(|| format!("cannot copy {} to {}", source.display(), tmp.display()))?;
    std::fs::rename(&tmp, &best).with_context(|| format!("cannot replace {}", best.display()))?;
    Ok(best)
}

/// Completed checkpoints `((epoch, batch), folder)`, oldest first (temporary folders are not
/// listed).
pub fn list(output: &Path) -> Result<Vec<((usize, usize), PathBuf)>> {
    let dir = output.join("checkpoints");
    if !dir.is_dir() {
        return Ok(vec![]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let position = path.file_name().and_then(|n| n.to_str()).and_then(parse_checkpoint_name);
        if let Some(epoch) = position
            && path.join(PROGRESS).is_file()
        {
            found.push((epoch, path));
        }
    }
    found.sort();
    Ok(found)
}

pub fn read_progress(dir: &Path) -> Result<Progress> {
    let path = dir.join(PROGRESS);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid checkpoint progress {}", path.display()))
}

/// Checkpoint `progress.epoch` with the model (written by `save_model`) and the optimizer state;
/// the last two are kept.
pub fn save_with_optimizer(
    output: &Path,
    progress: &mut Progress,
    optim: &ModuleOptimizer,
    save_model: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    save(output, progress, 2, |dir| {
        save_model(&dir.join(MODEL))?;
        let bytes = optim.into_bytes().map_err(|e| anyhow::anyhow!("optimizer state: {e:?}"))?;
        let path = dir.join(OPTIMIZER);
        std::fs::write(&path, &bytes[..]).with_context(|| format!("cannot write {}", path.display()))
    })
}

/// How a run splits its epochs into batches and optimizer steps (what the schedule follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub batches_per_epoch: usize,
    pub grad_accum: usize,
}

impl Schedule {
    pub fn steps_per_epoch(&self) -> usize {
        self.batches_per_epoch.div_ceil(self.grad_accum)
    }

    fn describe(&self) -> String {
        format!("{} batches per epoch, an optimizer step every {}", self.batches_per_epoch, self.grad_accum)
    }
}

/// Checks checkpoint `dir` before a run resumes from it: every file it records has the recorded
/// sha256, and its progress fits the run's schedule.
pub fn verify(dir: &Path, progress: &Progress, schedule: Schedule) -> Result<()> {
    for (name, recorded) in &progress.sha256 {
        let path = dir.join(name);
        if !path.is_file() {
            anyhow::bail!("checkpoint {}: {name} is missing", dir.display());
        }
        if sha256_file(&path)? != *recorded {
            anyhow::bail!(
                "checkpoint file {} is damaged or comes from another checkpoint: its sha256 is not the one \
                 recorded in {PROGRESS}; remove {} to resume from the checkpoint before it",
                path.display(),
                dir.display()
            );
        }
    }
    if let (Some(batches_per_epoch), Some(grad_accum)) = (progress.batches_per_epoch, progress.grad_accum) {
        let recorded = Schedule { batches_per_epoch, grad_accum };
        if recorded != schedule {
            anyhow::bail!(
                "checkpoint {} was written by a run of {}, but this config makes {}: resuming would change the \
                 learning-rate schedule; keep train.batch_size, train.grad_accum and the data as they were, or \
                 train into another output_dir",
                dir.display(),
                recorded.describe(),
                schedule.describe()
            );
        }
    }
    // A mid-epoch checkpoint is written right after an optimizer step.
    let expected = progress
        .epoch
        .checked_mul(schedule.steps_per_epoch())
        .and_then(|steps| steps.checked_add(progress.batch / schedule.grad_accum));
    let mid_epoch_ok =
        progress.batch < schedule.batches_per_epoch && progress.batch.is_multiple_of(schedule.grad_accum);
    if expected != Some(progress.step) || !mid_epoch_ok {
        anyhow::bail!(
            "checkpoint {}: {PROGRESS} records {} optimizer steps after {} epochs and {} batches, but this config \
             makes {} per epoch ({}): the file is damaged or the run was configured otherwise",
            dir.display(),
            progress.step,
            progress.epoch,
            progress.batch,
            schedule.steps_per_epoch(),
            schedule.describe()
        );
    }
    Ok(())
}

/// The optimizer state and the schedule's position from checkpoint folder `dir`, and its
/// progress, once [`verify`] has passed; the caller loads `dir/model.bpk` into its model.
pub fn restore(
    dir: &Path,
    optim: ModuleOptimizer,
    sched: &mut ModuleLrScheduler,
    schedule: Schedule,
    quiet: bool,
) -> Result<(Progress, ModuleOptimizer)> {
    let progress = read_progress(dir)?;
    verify(dir, &progress, schedule)?;
    let path = dir.join(OPTIMIZER);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let optim = optim
        .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("optimizer state {}: {e:?}", path.display()))?;
    for _ in 0..progress.step {
        sched.step();
    }
    if !quiet {
        eprintln!("resuming from {} (epoch {} done, step {})", dir.display(), progress.epoch, progress.step);
    }
    Ok((progress, optim))
}

/// Makes `best.bpk` agree with the checkpoint a run resumes from: a run stopped while writing it
/// (after its checkpoint) left the previous best or nothing; it is written again from the
/// checkpoint when that is the best epoch, else a mismatch is reported.
pub fn repair_best(output: &Path, dir: &Path, progress: &Progress) -> Result<()> {
    let Some(recorded) = &progress.best_sha256 else { return Ok(()) };
    let best = output.join(BEST);
    if best.is_file() && sha256_file(&best)? == *recorded {
        return Ok(());
    }
    if progress.best_epoch == progress.epoch && progress.batch == 0 {
        export_best(output, dir)?;
        eprintln!(
            "{} did not hold epoch {}'s weights: written again from {}",
            best.display(),
            progress.best_epoch,
            dir.display()
        );
    } else {
        eprintln!(
            "warning: {} is not the epoch-{} model the checkpoint records as the best (changed or damaged); it will \
             be replaced when the validation score improves",
            best.display(),
            progress.best_epoch
        );
    }
    Ok(())
}

/// Removes what a stopped run may have left half-written in `output`: temporary checkpoint
/// folders and files (`.epoch-NNNN.tmp`, `.best.bpk.tmp-*`, `.metrics.jsonl.tmp`).
pub fn remove_temporaries(output: &Path) -> Result<()> {
    for dir in [output.to_path_buf(), output.join("checkpoints")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') && name.contains(".tmp") {
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                removed.with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Holds `output/.lock` for the life of a run, so that two runs cannot write one output folder.
pub struct OutputLock {
    _file: std::fs::File,
}

pub fn lock_output(output: &Path) -> Result<OutputLock> {
    let path = output.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(OutputLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use by another training run (it holds {}); wait for it or give another train.output_dir",
            output.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Keeps the first `epochs` epochs' records of the run's `metrics.jsonl` (or another per-epoch
/// `.jsonl` file of the run: `name`), rewritten atomically, so that a run resumed from a
/// checkpoint older than its last record, or a fresh run in an old output folder, never lists an
/// epoch twice.
pub fn trim_epochs(output: &Path, name: &str, epochs: usize) -> Result<()> {
    let path = output.join(name);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let epoch_of = |line: &str| serde_json::from_str::<serde_json::Value>(line).ok()?.get("epoch")?.as_u64();
    let kept: Vec<&str> = text.lines().filter(|l| epoch_of(l).is_some_and(|e| e as usize <= epochs)).collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    let tmp = output.join(format!(".{name}.tmp"));
    let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&tmp, body).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))
}

/// One of the run's per-epoch files (`metrics.jsonl`, `batches.jsonl`), opened for appending (a
/// resumed run continues it).
pub fn epoch_file(output: &Path, name: &str) -> Result<std::fs::File> {
    let path = output.join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))
}
