//! Training checkpoints: the model (burnpack), the optimizer state and the progress (the
//! learning-rate schedule is a function of the step count), written to a temporary folder that
//! is renamed into place, so a checkpoint on disk is always whole.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

/// What the loop needs besides the tensors to continue where it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// The best validation score so far (top-1 for classifiers, AP for detectors).
    #[serde(alias = "best_top1")]
    pub best_score: f64,
    pub best_epoch: usize,
}

pub const MODEL: &str = "model.bpk";
pub const OPTIMIZER: &str = "optimizer.bpk";
pub const PROGRESS: &str = "progress.json";

pub fn checkpoint_dir(output: &Path, epoch: usize) -> PathBuf {
    output.join("checkpoints").join(format!("epoch-{epoch:04}"))
}

/// Writes a checkpoint folder atomically: `write` fills a temporary folder, which is then
/// renamed to `epoch-NNNN`. Older checkpoints beyond the last `keep` are removed.
pub fn save(
    output: &Path,
    progress: &Progress,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(output, progress.epoch);
    let parent = dir.parent().expect("checkpoint folders have a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".epoch-{:04}.tmp", progress.epoch));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    write(&tmp)?;
    std::fs::write(tmp.join(PROGRESS), serde_json::to_string_pretty(progress)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move checkpoint into {}", dir.display()))?;
    let mut all = list(output)?;
    while all.len() > keep {
        let (_, old) = all.remove(0);
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(dir)
}

/// Completed checkpoints `(epoch, folder)`, oldest first (temporary folders are not listed).
pub fn list(output: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = output.join("checkpoints");
    if !dir.is_dir() {
        return Ok(vec![]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let epoch = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("epoch-"))
            .and_then(|n| n.parse().ok());
        if let Some(epoch) = epoch
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
    progress: &Progress,
    optim: &ModuleOptimizer,
    save_model: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    save(output, progress, 2, |dir| {
        save_model(&dir.join(MODEL))?;
        let bytes = optim.into_bytes().map_err(|e| anyhow::anyhow!("optimizer state: {e:?}"))?;
        std::fs::write(dir.join(OPTIMIZER), &bytes[..])?;
        Ok(())
    })
}

/// The optimizer state and the schedule's position from checkpoint folder `dir`, and its
/// progress; the caller loads `dir/model.bpk` into its model.
pub fn restore(
    dir: &Path,
    optim: ModuleOptimizer,
    sched: &mut ModuleLrScheduler,
    quiet: bool,
) -> Result<(Progress, ModuleOptimizer)> {
    let progress = read_progress(dir)?;
    let bytes = std::fs::read(dir.join(OPTIMIZER)).with_context(|| format!("cannot read {}", dir.display()))?;
    let optim = optim
        .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("optimizer state in {}: {e:?}", dir.display()))?;
    for _ in 0..progress.step {
        sched.step();
    }
    if !quiet {
        eprintln!("resuming from {} (epoch {} done, step {})", dir.display(), progress.epoch, progress.step);
    }
    Ok((progress, optim))
}

/// Keeps the first `epochs` epochs' records of the run's `metrics.jsonl` (rewritten atomically),
/// so that a run resumed from a checkpoint older than its last record, or a fresh run in an old
/// output folder, never lists an epoch twice.
pub fn trim_metrics(output: &Path, epochs: usize) -> Result<()> {
    let path = output.join("metrics.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let epoch_of = |line: &str| serde_json::from_str::<serde_json::Value>(line).ok()?.get("epoch")?.as_u64();
    let kept: Vec<&str> = text.lines().filter(|l| epoch_of(l).is_some_and(|e| e as usize <= epochs)).collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    let tmp = output.join(".metrics.jsonl.tmp");
    let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&tmp, body).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The run's `metrics.jsonl`, opened for appending (a resumed run continues it).
pub fn metrics_file(output: &Path) -> Result<std::fs::File> {
    let path = output.join("metrics.jsonl");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))
}
