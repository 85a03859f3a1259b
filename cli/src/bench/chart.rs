//! The PNG of `bothy bench`: instructions per operation, one bar per configuration,
//! grouped by operation, on a logarithmic axis (bare QEMU's 1 and a 2-vCPU round trip
//! of tens of thousands share the chart).
//!
//! Drawn with `plotters`' bitmap backend. Text needs a TrueType font, which plotters'
//! `ab_glyph` feature loads from bytes (no fontconfig): DejaVu Sans from Debian's
//! `fonts-dejavu-core` (scripts/setup.sh installs it), or any file named by
//! `$BOTHY_FONT`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::micro::Report;
use super::Config;

/// Where the font is looked for, after `$BOTHY_FONT`.
pub const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const FONT: &str = "sans-serif";

/// Registers the font once per process; Err says what to install.
fn ensure_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("BOTHY_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no usable TrueType font for the chart (tried $BOTHY_FONT and {}): install \
             Debian's fonts-dejavu-core (./scripts/setup.sh does)",
            FONT_PATHS.join(", ")
        ))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn color(c: Config) -> RGBColor {
    match c {
        Config::Bare => RGBColor(150, 150, 150),
        Config::Xen => RGBColor(214, 96, 77),
        Config::Bothy => RGBColor(67, 147, 195),
    }
}

/// Writes the chart of `report` to `path` (PNG, 1400 x 700: room for eleven op names).
pub fn write_png(report: &Report, path: &Path) -> Result<()> {
    ensure_font()?;
    let configs: Vec<Config> = [Config::Bare, Config::Xen, Config::Bothy]
        .into_iter()
        .filter(|c| report.config(*c).is_some())
        .collect();
    if configs.is_empty() || report.ops.is_empty() {
        bail!("nothing to chart");
    }
    draw(report, &configs, path).map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
    // The bitmap backend writes on drop/present; make sure a file is there.
    std::fs::metadata(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn draw(
    report: &Report,
    configs: &[Config],
    path: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let ops = &report.ops;
    let n = ops.len();
    let max = configs
        .iter()
        .flat_map(|c| ops.iter().filter_map(|op| report.median(*c, op)))
        .max()
        .unwrap_or(1)
        .max(1);
    // Headroom above the tallest bar for its label.
    let top = 10f64.powf((max as f64).log10().ceil() + 0.3);

    let root = BitMapBackend::new(path, (1400, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "bothy bench: instructions per operation ({} samples, QEMU -icount, log scale)",
        report.iters
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (0.5f64..top).log_scale())?;
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 || i as usize >= n {
            return String::new();
        }
        let op = &ops[i as usize];
        if report.inexact.contains(op) {
            format!("{op} *")
        } else {
            op.clone()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("instructions")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;

    let group = 0.8;
    let w = group / configs.len() as f64;
    for (k, &c) in configs.iter().enumerate() {
        let style = color(c).filled();
        let bars: Vec<(f64, u64)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| Some((i as f64, report.median(c, op)?)))
            .collect();
        let x0 = |i: f64| i - group / 2.0 + k as f64 * w;
        chart
            .draw_series(bars.iter().map(|&(i, v)| {
                Rectangle::new([(x0(i), 0.5), (x0(i) + w * 0.92, v.max(1) as f64)], style)
            }))?
            .label(c.title())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], style));
        chart.draw_series(bars.iter().map(|&(i, v)| {
            Text::new(
                v.to_string(),
                (x0(i) + w * 0.46, v.max(1) as f64 * 1.15),
                (FONT, 12)
                    .into_font()
                    .color(&BLACK)
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Bottom,
                    )),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()?;
    if !report.inexact.is_empty() {
        root.draw(&Text::new(
            "* 2 vCPUs: icount is shared by both CPUs, so not an exact instruction count",
            (20, 680),
            (FONT, 13).into_font().color(&BLACK),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::micro::{ConfigReport, OpResult, Stats, OPS};
    use std::collections::BTreeMap;

    #[test]
    fn writes_a_png() {
        if ensure_font().is_err() {
            eprintln!("no font: skipping the chart test");
            return;
        }
        let mk = |name, scale: u64| ConfigReport {
            name,
            runs: Vec::new(),
            ops: OPS
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let m = (i as u64 + 1) * scale;
                    let s = Stats {
                        iters: 5,
                        total: 5 * m,
                        median: m,
                        min: m,
                        max: m,
                        overhead: 2,
                    };
                    (o.to_string(), OpResult::Ok(s))
                })
                .collect::<BTreeMap<_, _>>(),
        };
        let r = Report::new(
            "QEMU".into(),
            5,
            vec![
                mk(Config::Bare, 1),
                mk(Config::Xen, 500),
                mk(Config::Bothy, 200),
            ],
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.png");
        write_png(&r, &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    }
}
