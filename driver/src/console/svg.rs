//! Small SVG charts drawn on the server: line charts of per-epoch curves and a heatmap of a
//! confusion matrix. Colours are presentation attributes (not `style`), so the console's
//! Content-Security-Policy can forbid inline styles.

use maud::{Markup, html};

/// Line colours, in series order (then repeated).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart: its name in the legend and its `(x, y)` points.
pub(super) struct Series {
    pub(super) name: String,
    pub(super) points: Vec<(f64, f64)>,
    /// Drawn dashed (validation curves beside training ones).
    pub(super) dashed: bool,
    /// Points only, without the line through them (a scatter plot).
    pub(super) scatter: bool,
}

impl Series {
    /// A line through `points`.
    pub(super) fn line(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            dashed: false,
            scatter: false,
        }
    }

    /// This line dashed.
    pub(super) fn dashed(self) -> Self {
        Self {
            dashed: true,
            ..self
        }
    }

    /// `points` without a line.
    pub(super) fn points(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            scatter: true,
            ..Self::line(name, points)
        }
    }
}

const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 260.0;
/// Plot area margins: left (y ticks), right, top (title), bottom (x ticks and legend).
const MARGIN: [f64; 4] = [56.0, 16.0, 28.0, 56.0];

/// `n` round tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / n.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label: integers without decimals, others with up to 4 significant digits.
fn label(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0}")
    } else {
        let text = format!("{v:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A line chart of `series` titled `title`, `x` naming the horizontal axis; points with a
/// non-finite value are left out.
pub(super) fn line_chart(title: &str, x: &str, series: &[Series]) -> Markup {
    let points = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(a, b)| a.is_finite() && b.is_finite())
    };
    let bounds = |pick: fn(&(f64, f64)) -> f64| {
        points().map(pick).fold(None, |acc: Option<(f64, f64)>, v| {
            Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        })
    };
    let (Some((mut x0, mut x1)), Some((mut y0, mut y1))) = (bounds(|p| p.0), bounds(|p| p.1))
    else {
        return html! { p.empty { (title) ": no points yet" } };
    };
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    // Room above and below the extreme points, and beside them in a scatter plot.
    let pad = (y1 - y0) * 0.05;
    (y0, y1) = (y0 - pad, y1 + pad);
    if series.iter().any(|s| s.scatter) {
        let pad = (x1 - x0) * 0.05;
        (x0, x1) = (x0 - pad, x1 + pad);
    }
    // Whole x values (epochs) get whole ticks only.
    let whole = points().all(|(a, _)| a.fract() == 0.0);
    let x_ticks: Vec<f64> = ticks(x0, x1, 6)
        .into_iter()
        .filter(|t| !whole || t.fract() == 0.0)
        .collect();
    let [left, right, top, bottom] = MARGIN;
    let (w, h) = (WIDTH - left - right, HEIGHT - top - bottom);
    // Legend rows of three below the x axis's label.
    let height = HEIGHT + (series.len().max(1).div_ceil(3) - 1) as f64 * 14.0;
    // Coordinates to a tenth of a pixel.
    let sx = |v: f64| format!("{:.1}", left + (v - x0) / (x1 - x0) * w);
    let sy = |v: f64| format!("{:.1}", top + h - (v - y0) / (y1 - y0) * h);
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {height}"))
            role="img" aria-label=(title) {
            title { (title) }
            text x=(WIDTH / 2.0) y="18" text-anchor="middle" font-size="14" font-weight="bold" { (title) }
            @for t in ticks(y0, y1, 5) {
                line x1=(left) x2=(left + w) y1=(sy(t)) y2=(sy(t)) stroke="#e5e5e5" {}
                text x=(left - 6.0) y=(sy(t)) dy="4" text-anchor="end" font-size="11" { (label(t)) }
            }
            @for t in &x_ticks {
                text x=(sx(*t)) y=(top + h + 16.0) text-anchor="middle" font-size="11" { (label(*t)) }
            }
            rect x=(left) y=(top) width=(w) height=(h) fill="none" stroke="#999" {}
            text x=(left + w / 2.0) y=(top + h + 32.0) text-anchor="middle" font-size="11" { (x) }
            @for (i, s) in series.iter().enumerate() {
                @let colour = PALETTE[i % PALETTE.len()];
                @let at: Vec<(String, String)> = s.points.iter()
                    .filter(|(a, b)| a.is_finite() && b.is_finite())
                    .map(|&(a, b)| (sx(a), sy(b)))
                    .collect();
                @if !s.scatter {
                    @let line: Vec<String> = at.iter().map(|(x, y)| format!("{x},{y}")).collect();
                    polyline points=(line.join(" ")) fill="none" stroke=(colour) stroke-width="2"
                        stroke-dasharray=[s.dashed.then_some("6 3")] {}
                }
                @for (cx, cy) in &at {
                    circle cx=(cx) cy=(cy) r=(if s.scatter { "4" } else { "2.5" }) fill=(colour) {}
                }
                @let lx = left + (i % 3) as f64 * (w / 3.0);
                @let ly = top + h + 48.0 + (i / 3) as f64 * 14.0;
                line x1=(lx) x2=(lx + 18.0) y1=(ly - 4.0) y2=(ly - 4.0) stroke=(colour)
                    stroke-width="2" stroke-dasharray=[s.dashed.then_some("6 3")] {}
                text x=(lx + 22.0) y=(ly) font-size="11" { (s.name) }
            }
        }
    }
}

/// The confusion matrix `counts[actual][predicted]` as a heatmap with `labels` on both axes:
/// each cell shaded by its share of its row (the actual class), with its count written in it.
pub(super) fn heatmap(labels: &[String], counts: &[Vec<u64>]) -> Markup {
    let n = labels.len().max(1);
    let cell = (360.0 / n as f64).clamp(18.0, 48.0);
    let left = 120.0;
    let top = 24.0;
    let size = cell * n as f64;
    let (width, height) = (left + size + 8.0, top + size + 110.0);
    html! {
        svg.heatmap xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {width} {height}"))
            role="img" aria-label="confusion matrix" {
            title { "confusion matrix: rows actual, columns predicted" }
            text x=(left + size / 2.0) y="14" text-anchor="middle" font-size="12" { "predicted" }
            text x="12" y=(top + size / 2.0) text-anchor="middle" font-size="12"
                transform=(format!("rotate(-90 12 {})", top + size / 2.0)) { "actual" }
            @for (a, row) in counts.iter().enumerate() {
                @let total = row.iter().sum::<u64>().max(1) as f64;
                text x=(left - 6.0) y=(top + (a as f64 + 0.5) * cell + 4.0) text-anchor="end"
                    font-size="11" { (labels.get(a).map_or("?", String::as_str)) }
                @for (p, &count) in row.iter().enumerate() {
                    @let share = count as f64 / total;
                    @let x = left + p as f64 * cell;
                    @let y = top + a as f64 * cell;
                    rect x=(x) y=(y) width=(cell) height=(cell) stroke="#fff"
                        fill=(format!("rgb({0},{1},{2})", shade(255.0, 8.0, share), shade(255.0, 81.0, share), shade(255.0, 156.0, share))) {
                        title { (labels.get(a).map_or("?", String::as_str)) " predicted as "
                            (labels.get(p).map_or("?", String::as_str)) ": " (count) }
                    }
                    text x=(x + cell / 2.0) y=(y + cell / 2.0 + 4.0) text-anchor="middle"
                        font-size=(if cell < 28.0 { "9" } else { "11" })
                        fill=(if share > 0.5 { "#fff" } else { "#222" }) { (count) }
                }
            }
            @for (p, name) in labels.iter().enumerate() {
                @let x = left + (p as f64 + 0.5) * cell;
                text x=(x) y=(top + size + 8.0) font-size="11" text-anchor="end"
                    transform=(format!("rotate(-60 {x} {})", top + size + 8.0)) { (name) }
            }
        }
    }
}

/// A channel between white (`share` 0) and the darkest colour (`share` 1).
fn shade(light: f64, dark: f64, share: f64) -> u8 {
    (light + (dark - light) * share.clamp(0.0, 1.0)).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(ticks(1.0, 10.0, 6), vec![2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(label(0.25), "0.25");
        assert_eq!(label(3.0), "3");
    }

    #[test]
    fn charts_escape_names_and_skip_non_finite_points() {
        let series = [Series::line(
            "<script>alert(1)</script>",
            vec![(1.0, 0.5), (2.0, f64::NAN), (3.0, 0.25)],
        )];
        let svg = line_chart("loss", "epoch", &series).into_string();
        assert!(
            !svg.contains("<script>") && svg.contains("&lt;script&gt;"),
            "{svg}"
        );
        assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
        // Epochs are whole: no tick between them.
        assert!(
            svg.contains(">2</text>") && !svg.contains(">1.5</text>"),
            "{svg}"
        );
        let scatter = line_chart("lr", "x", &[Series::points("trials", vec![(0.1, 1.0)])]);
        let scatter = scatter.into_string();
        assert!(
            !scatter.contains("<polyline") && scatter.contains("<circle"),
            "{scatter}"
        );
        let empty = line_chart("loss", "epoch", &[]).into_string();
        assert!(empty.contains("no points yet"), "{empty}");
        let labels = vec!["<b>".to_string(), "b".to_string()];
        let map = heatmap(&labels, &[vec![3, 1], vec![0, 4]]).into_string();
        assert!(!map.contains("<b>") && map.contains("&lt;b&gt;"), "{map}");
        assert!(
            map.contains(">3</text>") && map.contains(">4</text>"),
            "{map}"
        );
    }
}
