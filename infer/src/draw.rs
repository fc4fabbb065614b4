//! Boxes and labels drawn onto an image, for people to look at.

use std::path::Path;

use font8x8::{BASIC_FONTS, UnicodeFonts};
use image::{Rgb, RgbImage};

/// A colour per class, spread around the hue circle.
pub fn class_colour(label: usize) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 8] = [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ];
    Rgb(PALETTE[label % PALETTE.len()])
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// An unfilled rectangle `[x0, y0, x1, y1]` with lines `thickness` pixels wide, inside the box.
pub fn rectangle(img: &mut RgbImage, [x0, y0, x1, y1]: [f32; 4], thickness: i64, c: Rgb<u8>) {
    let (x0, y0, x1, y1) = (x0.round() as i64, y0.round() as i64, x1.round() as i64, y1.round() as i64);
    for t in 0..thickness {
        for x in x0..=x1 {
            put(img, x, y0 + t, c);
            put(img, x, y1 - t, c);
        }
        for y in y0..=y1 {
            put(img, x0 + t, y, c);
            put(img, x1 - t, y, c);
        }
    }
}

/// `text` in an 8x8 bitmap font scaled by `scale`, white on a `background` band, its top left
/// at `(x, y)`.
pub fn label(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, background: Rgb<u8>) {
    let (w, h) = (text.chars().count() as i64 * 8 * scale + 2, 8 * scale + 2);
    for dy in 0..h {
        for dx in 0..w {
            put(img, x + dx, y + dy, background);
        }
    }
    for (i, ch) in text.chars().enumerate() {
        let glyph = BASIC_FONTS.get(ch).or_else(|| BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let px = x + 1 + (i as i64 * 8 + col) * scale + sx;
                            let py = y + 1 + row as i64 * scale + sy;
                            put(img, px, py, Rgb([255, 255, 255]));
                        }
                    }
                }
            }
        }
    }
}

/// A detection's box `[x0, y0, x1, y1]` in `colour` with `text` above it, sized to the image.
pub fn labelled_box(img: &mut RgbImage, [x0, y0, x1, y1]: [f32; 4], text: &str, colour: Rgb<u8>) {
    let scale = (img.width().max(img.height()) as i64 / 400).max(1);
    rectangle(img, [x0, y0, x1, y1], 2 * scale, colour);
    label(img, text, x0.round() as i64, (y0.round() as i64 - 8 * scale - 2).max(0), scale, colour);
}

/// Output names for the inputs: each file's stem, with `-2`, `-3`... where two share one.
pub fn unique_stems<'a>(inputs: impl IntoIterator<Item = &'a Path>) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    inputs
        .into_iter()
        .map(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("image").to_string();
            let mut names = (1..).map(|n| if n == 1 { stem.clone() } else { format!("{stem}-{n}") });
            names.find(|n| used.insert(n.clone())).expect("some name is free")
        })
        .collect()
}
