//! Image files to 8-bit RGB, with errors that name the file.

use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("image {0} does not exist")]
    NotFound(PathBuf),
    #[error("cannot read image {path}: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Images longer than this many times their width (or wider than their height) are refused: the
/// models' resizes would turn them into images of billions of pixels (a 1x200000 image resized
/// to a 248-pixel shorter side), or into none (DETR's longer-side cap on a 1x4000 image).
pub const MAX_ASPECT_RATIO: u32 = 64;

/// Decodes an image file (PNG, JPEG, BMP) as 8-bit RGB. Grayscale is replicated to three
/// channels, alpha is dropped (as PIL's `convert("RGB")` does), 16-bit samples are scaled to 8
/// bits. A JPEG whose data ends before its end-of-image marker is refused, as PIL refuses it
/// ("image file is truncated"): decoders otherwise fill the missing rows with grey.
pub fn load_rgb(path: &Path) -> Result<RgbImage, DataError> {
    if !path.is_file() {
        return Err(DataError::NotFound(path.to_path_buf()));
    }
    let decode_err = |message: String| DataError::Decode { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| decode_err(e.to_string()))?;
    let format = image::guess_format(&bytes)
        .map_err(|_| decode_err("not a recognised image format (expected PNG, JPEG or BMP)".into()))?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(decode_err(format!("the JPEG data is truncated ({} bytes, no end-of-image marker)", bytes.len())));
    }
    // The reader's default limits refuse decompression bombs.
    let reader = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format);
    let img = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(decode_err("the image is empty".into()));
    }
    if w.max(h) / w.min(h) > MAX_ASPECT_RATIO {
        return Err(decode_err(format!(
            "the image is {w}x{h} pixels, more than {MAX_ASPECT_RATIO} times longer one way than the other"
        )));
    }
    Ok(img.to_rgb8())
}

/// Whether a JPEG stream reaches its end-of-image marker: the segments before each scan are
/// skipped by their lengths, each scan's entropy-coded data up to the next marker (a 0xFF byte
/// followed by neither 0x00, a byte stuffing, nor a restart marker 0xD0-0xD7).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOS: u8 = 0xDA;
    const EOI: u8 = 0xD9;
    let mut i = 2; // after the start-of-image marker
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        match marker {
            EOI => return true,
            0xFF => {
                i += 1; // fill byte
                continue;
            }
            0x01 | 0xD0..=0xD7 => {
                i += 2; // markers without a length
                continue;
            }
            _ => {}
        }
        let Some(len) = bytes.get(i + 2..i + 4).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
            return false;
        };
        i += 2 + len;
        if marker == SOS {
            // Entropy-coded data: find the next marker.
            loop {
                match (bytes.get(i), bytes.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return false,
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_jpegs_are_found() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/grace_hopper.jpg");
        let bytes = std::fs::read(&path).unwrap();
        assert!(jpeg_is_complete(&bytes));
        // Trailing bytes after the end-of-image marker are allowed, as PIL allows them.
        assert!(jpeg_is_complete(&[&bytes[..], b"trailer"].concat()));
        for cut in [4, 100, 1000, bytes.len() / 2, bytes.len() - 2] {
            assert!(!jpeg_is_complete(&bytes[..cut]), "cut at {cut}");
        }
    }
}
