//! ImageNet-style image folders: `root/<class>/<image>`, labels are the index of the class
//! folder in sorted order (n01440764 = 0 for ImageNet).

use std::path::{Path, PathBuf};

use crate::DataError;

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

/// The images of one split and their labels.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// Class folder names, sorted: class `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Every image with its label, in sorted order.
    pub samples: Vec<(PathBuf, usize)>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let read =
        std::fs::read_dir(dir).map_err(|e| DataError::Invalid(format!("cannot read folder {}: {e}", dir.display())))?;
    let mut entries = read
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataError::Invalid(format!("cannot read folder {}: {e}", dir.display())))?;
    entries.sort();
    Ok(entries)
}

impl ImageFolder {
    /// Scans `root`. A missing root, a root without class folders, or a class folder without
    /// images is an error naming the folder; with `allow_empty_classes`, an empty class folder
    /// keeps its label and is reported on stderr instead.
    pub fn open(root: &Path, allow_empty_classes: bool) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::Invalid(format!("dataset folder {} does not exist", root.display())));
        }
        let class_dirs: Vec<PathBuf> = sorted_entries(root)?.into_iter().filter(|p| p.is_dir()).collect();
        if class_dirs.is_empty() {
            return Err(DataError::Invalid(format!(
                "dataset folder {} has no class folders (expected {}/<class>/<image>)",
                root.display(),
                root.display()
            )));
        }
        let mut classes = Vec::new();
        let mut samples = Vec::new();
        for (label, dir) in class_dirs.iter().enumerate() {
            let images: Vec<PathBuf> =
                sorted_entries(dir)?.into_iter().filter(|p| p.is_file() && is_image(p)).collect();
            if images.is_empty() {
                let message = format!("class folder {} has no images (.jpg, .jpeg, .png, .bmp)", dir.display());
                if !allow_empty_classes {
                    return Err(DataError::Invalid(message));
                }
                eprintln!("warning: {message}");
            }
            classes.push(dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
            samples.extend(images.into_iter().map(|p| (p, label)));
        }
        if samples.is_empty() {
            return Err(DataError::Invalid(format!("dataset folder {} holds no images", root.display())));
        }
        Ok(Self { root: root.to_path_buf(), classes, samples })
    }
}
