//! Training curves as PNG pictures (plotters): loss, learning rate and the validation score of
//! one run or several side by side, from the records of their `metrics.jsonl`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde_json::Value;

/// A run to plot: its name in the legend and its epochs' records.
pub struct Curves {
    pub name: String,
    pub epochs: Vec<Value>,
}

/// The records of a `metrics.jsonl` file, one JSON object per line.
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let records = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let record: Value =
                serde_json::from_str(l).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
            if record.get("epoch").and_then(Value::as_u64).is_none() {
                bail!("{} line {}: a record without an `epoch`", path.display(), i + 1);
            }
            Ok(record)
        })
        .collect::<Result<Vec<_>>>()?;
    if records.is_empty() {
        bail!("{} holds no epochs", path.display());
    }
    Ok(records)
}

/// The panels: a title and the fields drawn in it (solid, then dashed).
const PANELS: [(&str, &[&str]); 3] = [
    ("loss (train solid, val dashed)", &["train_loss", "val_loss"]),
    ("learning rate", &["lr"]),
    ("validation score (top-1 / AP solid, top-5 / AP50 dashed)", &["val_top1|val_ap", "val_top5|val_ap50"]),
];

fn field(record: &Value, names: &str) -> Option<f64> {
    names.split('|').find_map(|n| record.get(n)?.as_f64()).filter(|v| v.is_finite())
}

fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is embedded: no system font library is needed.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws the runs' curves, one panel per quantity, into the PNG `out`.
pub fn plot(runs: &[Curves], out: &Path) -> Result<()> {
    register_fonts();
    let drawing_err = |e: String| anyhow::anyhow!("cannot draw {}: {e}", out.display());
    let root = BitMapBackend::new(out, (1500, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| drawing_err(e.to_string()))?;
    let panels = root.split_evenly((1, PANELS.len()));
    for (area, (title, fields)) in panels.iter().zip(PANELS) {
        let points = |run: &Curves, f: &str| -> Vec<(f64, f64)> {
            run.epochs.iter().filter_map(|r| Some((r["epoch"].as_f64()?, field(r, f)?))).collect()
        };
        let all: Vec<(f64, f64)> = runs.iter().flat_map(|r| fields.iter().flat_map(|f| points(r, f))).collect();
        if all.is_empty() {
            continue;
        }
        let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
        let (y_min, y_max) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let pad = ((y_max - y_min) * 0.05).max(1e-12);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, y_min - pad..y_max + pad)
            .map_err(|e| drawing_err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| if v.abs() < 0.01 && *v != 0.0 { format!("{v:.1e}") } else { format!("{v:.3}") })
            .draw()
            .map_err(|e| drawing_err(e.to_string()))?;
        for (i, run) in runs.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            for (k, f) in fields.iter().enumerate() {
                let series = points(run, f);
                if series.is_empty() {
                    continue;
                }
                let style = ShapeStyle { color: colour, filled: false, stroke_width: 2 };
                let drawn = if k == 0 {
                    chart.draw_series(LineSeries::new(series, style))
                } else {
                    chart.draw_series(DashedLineSeries::new(series, 6, 4, style))
                };
                let drawn = drawn.map_err(|e| drawing_err(e.to_string()))?;
                if k == 0 {
                    let name = run.name.clone();
                    drawn.label(name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| drawing_err(e.to_string()))?;
    }
    root.present().map_err(|e| drawing_err(e.to_string()))
}
