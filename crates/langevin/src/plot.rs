//! PNG plots for data, samples and training curves.
//!
//! Everything is drawn with `plotters` into an in-memory RGB buffer, encoded as PNG with the
//! `image` crate, and written with [`write_atomic_bytes`], so a plot on disk is always whole.
//! Text uses the bundled DejaVu Sans (registered once as `"sans-serif"`), so no system fonts
//! are needed.
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

pub use plotters::style::RGBColor;

use crate::data::Table;
use crate::io::write_atomic_bytes;
use crate::{Error, Result};

/// Size of one scatter panel in pixels; a scatter plot of `k` series is `k` panels wide plus a
/// title band, see [`scatter_size`].
pub const PANEL_SIZE: (u32, u32) = (460, 460);
/// Height of the title band above scatter panels.
pub const TITLE_HEIGHT: u32 = 40;
/// Size of line and loss plots in pixels.
pub const LINE_SIZE: (u32, u32) = (800, 500);

/// Distinct colours for successive series (Tableau 10).
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One point set of a scatter plot; columns 0 and 1 of `points` are x and y.
pub struct ScatterSeries<'a> {
    pub label: String,
    pub points: &'a Table,
    pub color: RGBColor,
}

/// One curve of a line plot.
pub struct LineSeries {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const FONT: &str = "sans-serif";
static FONT_ONCE: Once = Once::new();

fn ensure_font() {
    FONT_ONCE.call_once(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        )
        .unwrap_or_else(|_| panic!("bundled DejaVuSans.ttf is not a valid font"));
    });
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, Shift>;

/// Draw into a white `size` canvas with `draw`, then encode and write the PNG atomically.
fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area<'_>) -> Result<()>) -> Result<()> {
    ensure_font();
    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&buf, w, h, ExtendedColorType::Rgb8)
        .map_err(plot_err)?;
    write_atomic_bytes(path, &png)
}

/// The `q`-quantile (0 ≤ q ≤ 1) of finite values, by nearest rank; `None` if there are none.
fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    Some(*v.select_nth_unstable_by(k, f64::total_cmp).1)
}

/// Pad `lo..hi` by `frac` of its width (or ±1 when it is a single point).
fn padded(lo: f64, hi: f64, frac: f64) -> Range<f64> {
    if hi > lo {
        let p = (hi - lo) * frac;
        lo - p..hi + p
    } else {
        lo - 1.0..hi + 1.0
    }
}

/// Shared axis ranges for scatter panels: the union over series of the 0.5 %–99.5 % quantile
/// box, padded by 8 %, so a few wild samples do not squash the picture.
fn scatter_ranges(series: &[ScatterSeries]) -> (Range<f64>, Range<f64>) {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for s in series {
        for (axis, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
            let mut v: Vec<f64> = (0..s.points.rows)
                .map(|i| s.points.data[i * s.points.cols + axis])
                .filter(|v| v.is_finite())
                .collect();
            if let (Some(a), Some(b)) = (quantile(&mut v, 0.005), quantile(&mut v, 0.995)) {
                *l = l.min(a);
                *h = h.max(b);
            }
        }
    }
    if lo[0] > hi[0] {
        return (-1.0..1.0, -1.0..1.0);
    }
    (padded(lo[0], hi[0], 0.08), padded(lo[1], hi[1], 0.08))
}

/// Width and height of a scatter plot with `n_series` panels.
pub fn scatter_size(n_series: usize) -> (u32, u32) {
    (
        PANEL_SIZE.0 * n_series.max(1) as u32,
        PANEL_SIZE.1 + TITLE_HEIGHT,
    )
}

/// Scatter plot of 2-D point sets, one panel per series side by side, all sharing the same
/// axis ranges (so data and samples can be compared by eye). Each panel is captioned with its
/// label and point count. Tables need at least 2 columns; only the first two are drawn.
pub fn scatter_png(path: impl AsRef<Path>, title: &str, series: &[ScatterSeries]) -> Result<()> {
    if series.is_empty() {
        return Err(Error::Plot("scatter_png: no series".into()));
    }
    if let Some(s) = series.iter().find(|s| s.points.cols < 2) {
        return Err(Error::Plot(format!(
            "scatter_png: series '{}' has {} column(s), need 2",
            s.label, s.points.cols
        )));
    }
    let (xr, yr) = scatter_ranges(series);
    render(path.as_ref(), scatter_size(series.len()), |root| {
        let body = root.titled(title, (FONT, 26)).map_err(plot_err)?;
        let panels = body.split_evenly((1, series.len()));
        for (panel, s) in panels.iter().zip(series) {
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{} (n = {})", s.label, s.points.rows), (FONT, 18))
                .margin(12)
                .x_label_area_size(28)
                .y_label_area_size(40)
                .build_cartesian_2d(xr.clone(), yr.clone())
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .light_line_style(WHITE.mix(0.0))
                .label_style((FONT, 12))
                .draw()
                .map_err(plot_err)?;
            let style = s.color.mix(0.45).filled();
            let pts = s.points.data.chunks_exact(s.points.cols).filter_map(|p| {
                let (x, y) = (p[0], p[1]);
                (xr.contains(&x) && yr.contains(&y)).then(|| Circle::new((x, y), 2, style))
            });
            chart.draw_series(pts).map_err(plot_err)?;
        }
        Ok(())
    })
}

/// A short axis label: at most 4 decimals with trailing zeros dropped, or scientific notation
/// for very large or small magnitudes.
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draw `series` (each with its colour and stroke width) on one chart with a legend.
#[allow(clippy::too_many_arguments)]
fn draw_lines<Y>(
    root: &Area<'_>,
    title: &str,
    x_label: &str,
    y_label: &str,
    xr: Range<f64>,
    y_spec: Y,
    series: &[(&LineSeries, RGBColor, u32)],
    keep: impl Fn(f64) -> bool,
) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(xr, y_spec)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(WHITE.mix(0.0))
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .draw()
        .map_err(plot_err)?;
    for &(s, color, width) in series {
        let pts = s
            .points
            .iter()
            .copied()
            .filter(|&(x, y)| x.is_finite() && y.is_finite() && keep(y));
        chart
            .draw_series(plotters::series::LineSeries::new(
                pts,
                color.stroke_width(width),
            ))
            .map_err(plot_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// Line plot with a legend, [`LINE_SIZE`] pixels. With `log_y`, the y axis is logarithmic and
/// points with `y ≤ 0` are left out (if no positive value remains, the axis falls back to
/// linear). Non-finite points are always left out. Colours follow [`PALETTE`].
pub fn line_png(
    path: impl AsRef<Path>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[LineSeries],
    log_y: bool,
) -> Result<()> {
    let styled: Vec<_> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s, PALETTE[i % PALETTE.len()], 2))
        .collect();
    lines_png(path.as_ref(), title, x_label, y_label, &styled, log_y)
}

fn lines_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&LineSeries, RGBColor, u32)],
    log_y: bool,
) -> Result<()> {
    let pts = || {
        series
            .iter()
            .flat_map(|(s, _, _)| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut p0, mut p1) = (f64::INFINITY, f64::NEG_INFINITY); // positive y only
    for (x, y) in pts() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        if y > 0.0 {
            (p0, p1) = (p0.min(y), p1.max(y));
        }
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let xr = if x1 > x0 { x0..x1 } else { x0 - 1.0..x1 + 1.0 };
    render(path, LINE_SIZE, |root| {
        if log_y && p0 <= p1 {
            let (lo, hi) = if p1 > p0 {
                (p0 / 1.3, p1 * 1.3)
            } else {
                (p0 / 2.0, p1 * 2.0)
            };
            let y = (lo..hi).log_scale();
            draw_lines(root, title, x_label, y_label, xr, y, series, |v| v > 0.0)
        } else {
            let y = padded(y0, y1, 0.05);
            draw_lines(root, title, x_label, y_label, xr, y, series, |_| true)
        }
    })
}

/// Bias-corrected exponential moving average with smoothing `beta` (0 ≤ beta < 1).
pub fn ema(values: &[f64], beta: f64) -> Vec<f64> {
    let mut m = 0.0;
    let mut w = 0.0;
    values
        .iter()
        .map(|&v| {
            m = beta * m + (1.0 - beta) * v;
            w = beta * w + (1.0 - beta);
            m / w
        })
        .collect()
}

/// Training-loss plot, [`LINE_SIZE`] pixels, log y axis: the raw losses in a light colour and
/// a bias-corrected EMA on top, with span `clamp(n / 25, 1, 500)` steps
/// (`beta = 1 − 2 / (span + 1)`).
pub fn loss_png(path: impl AsRef<Path>, losses: &[(usize, f64)]) -> Result<()> {
    let span = (losses.len() / 25).clamp(1, 500) as f64;
    let beta = 1.0 - 2.0 / (span + 1.0);
    let values: Vec<f64> = losses.iter().map(|&(_, l)| l).collect();
    let raw = LineSeries {
        label: "loss".into(),
        points: losses.iter().map(|&(s, l)| (s as f64, l)).collect(),
    };
    let smooth = LineSeries {
        label: format!("EMA (span {span})"),
        points: losses
            .iter()
            .zip(ema(&values, beta))
            .map(|(&(s, _), m)| (s as f64, m))
            .collect(),
    };
    let series = [
        (&raw, RGBColor(158, 202, 225), 1),
        (&smooth, RGBColor(8, 48, 107), 2),
    ];
    lines_png(
        path.as_ref(),
        "training loss",
        "step",
        "loss",
        &series,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{test_util::scratch_dir, Toy2d};
    use crate::rng::seeded;

    /// Decode a PNG and return (width, height, pixels that are not white, pixels near `rgb`).
    fn inspect(path: &Path, rgb: [u8; 3]) -> (u32, u32, usize, usize) {
        let img = image::open(path).unwrap().to_rgb8();
        let (mut ink, mut near) = (0, 0);
        for p in img.pixels() {
            ink += (p.0 != [255, 255, 255]) as usize;
            let d: i32 =
                p.0.iter()
                    .zip(rgb)
                    .map(|(&a, b)| (a as i32 - b as i32).abs())
                    .sum();
            near += (d < 60) as usize;
        }
        (img.width(), img.height(), ink, near)
    }

    /// Remove a test's plots unless `LANGEVIN_KEEP_PLOTS` is set (to look at them).
    fn cleanup(dir: &Path) {
        if std::env::var_os("LANGEVIN_KEEP_PLOTS").is_none() {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn scatter_panels_are_drawn() {
        let dir = scratch_dir("plot-scatter");
        let data = Toy2d::EightGaussians.sample(2000, &mut seeded(1));
        let samples = Toy2d::Rings.sample(2000, &mut seeded(2));
        let p = dir.join("scatter.png");
        let series = [
            ScatterSeries {
                label: "data".into(),
                points: &data,
                color: PALETTE[0],
            },
            ScatterSeries {
                label: "samples".into(),
                points: &samples,
                color: PALETTE[1],
            },
        ];
        scatter_png(&p, "8-gaussians vs rings", &series).unwrap();
        let (w, h, ink, orange) = inspect(&p, [255, 170, 110]);
        assert_eq!((w, h), scatter_size(2));
        assert_eq!((w, h), (920, 500));
        assert!(ink > 20_000, "{ink} inked pixels");
        assert!(
            orange > 2_000,
            "{orange} pixels of the second series' colour"
        );
        let one = Table::unnamed(1, vec![1.0, 2.0]).unwrap();
        let bad = [ScatterSeries {
            label: "x".into(),
            points: &one,
            color: PALETTE[0],
        }];
        assert!(scatter_png(dir.join("bad.png"), "t", &bad).is_err());
        cleanup(&dir);
    }

    #[test]
    fn line_and_loss_plots_are_drawn() {
        let dir = scratch_dir("plot-lines");
        let series = [
            LineSeries {
                label: "swd".into(),
                points: (0..50)
                    .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                    .collect(),
            },
            LineSeries {
                label: "floor (with a zero)".into(),
                points: vec![(0.0, 0.05), (25.0, 0.0), (49.0, 0.05)],
            },
        ];
        for log_y in [false, true] {
            let p = dir.join(format!("line-{log_y}.png"));
            line_png(&p, "metrics", "epoch", "value", &series, log_y).unwrap();
            let (w, h, ink, blue) = inspect(&p, [31, 119, 180]);
            assert_eq!((w, h), LINE_SIZE);
            assert!(ink > 5_000 && blue > 300, "{ink} inked, {blue} blue");
        }
        let losses: Vec<(usize, f64)> = (0..1000)
            .map(|s| {
                (
                    s,
                    2.0 * (-(s as f64) / 300.0).exp() + 0.05 * ((s * 7919) % 13) as f64 / 13.0,
                )
            })
            .collect();
        let p = dir.join("loss.png");
        loss_png(&p, &losses).unwrap();
        let (w, h, ink, dark) = inspect(&p, [8, 48, 107]);
        assert_eq!((w, h), LINE_SIZE);
        assert!(
            ink > 5_000 && dark > 300,
            "{ink} inked, {dark} EMA-coloured"
        );
        loss_png(dir.join("empty.png"), &[]).unwrap();
        cleanup(&dir);
    }

    #[test]
    fn tick_labels_are_short() {
        let got: Vec<String> = [0.0, 0.30000000000000004, 100.0, -2.5, 1e-5, 123456.0]
            .iter()
            .map(|&v| tick_label(v))
            .collect();
        assert_eq!(got, ["0", "0.3", "100", "-2.5", "1.0e-5", "1.2e5"]);
    }

    #[test]
    fn ema_is_bias_corrected() {
        assert_eq!(ema(&[4.0, 4.0, 4.0], 0.9), vec![4.0, 4.0, 4.0]);
        let e = ema(&[0.0, 10.0], 0.5);
        // m = 0.5·0 + 0.5·10 = 5 after the second step, weight 0.75.
        assert!((e[1] - 5.0 / 0.75).abs() < 1e-12);
    }
}
