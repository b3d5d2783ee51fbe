//! SVG charts of `client bench`: throughput and latency over time (`--plot`), and throughput
//! against latency (`bench sweep --plot`, `bench chart`). plotters with its SVG backend only:
//! text is left to the SVG viewer, so no font is needed to draw.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One second of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Second {
    /// End of the interval, in seconds since the start.
    pub t_s: f64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One point of a throughput-vs-latency curve.
#[derive(Debug, Clone)]
pub struct Point {
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Shown beside the point (e.g. "c16").
    pub tag: String,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Throughput (top) and p50/p99 latency (bottom) per second.
pub fn timeline(path: &Path, title: &str, series: &[Second]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
    let (top, bottom) = root.split_vertically(280);
    let t_max = series.iter().map(|s| s.t_s).fold(1.0, f64::max);
    let ops_max = series.iter().map(|s| s.ops_per_sec).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..ops_max)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc("ops/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;
    c.draw_series(LineSeries::new(
        series.iter().map(|s| (s.t_s, s.ops_per_sec)),
        COLORS[0].stroke_width(2),
    ))
    .map_err(err)?
    .label("throughput")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], COLORS[0]));
    let lat_max = series.iter().map(|s| s.p99_ms).fold(0.1, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..lat_max)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(err)?;
    for (i, (name, f)) in [
        ("p50", (|s: &Second| s.p50_ms) as fn(&Second) -> f64),
        ("p99", |s: &Second| s.p99_ms),
    ]
    .into_iter()
    .enumerate()
    {
        let color = COLORS[i + 1];
        c.draw_series(LineSeries::new(
            series.iter().filter(|s| s.ops > 0).map(|s| (s.t_s, f(s))),
            color.stroke_width(2),
        ))
        .map_err(err)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Latency (log scale) against throughput, one curve per label: p50 solid, p99 dashed.
pub fn curves(path: &Path, title: &str, curves: &[(String, Vec<Point>)]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all = curves.iter().flat_map(|(_, p)| p.iter());
    let x_max = all.clone().map(|p| p.ops_per_sec).fold(1.0, f64::max) * 1.1;
    let y_max = all.clone().map(|p| p.p99_ms).fold(0.1, f64::max) * 1.5;
    let y_min = all
        .map(|p| p.p50_ms)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(y_max / 10.0)
        * 0.8;
    // The y axis holds log10(ms), labelled in ms: plotters' own log axis labels only powers of
    // ten, which leaves most curves between two labels.
    let log = |ms: f64| ms.max(1e-6).log10();
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, log(y_min)..log(y_max))
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("throughput (ops/s)")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            let ms = 10f64.powf(*v);
            if ms >= 10.0 {
                format!("{ms:.0}")
            } else if ms >= 1.0 {
                format!("{ms:.1}")
            } else {
                format!("{ms:.2}")
            }
        })
        .y_labels(12)
        .draw()
        .map_err(err)?;
    for (i, (label, points)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = points.clone();
        pts.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
        c.draw_series(LineSeries::new(
            pts.iter().map(|p| (p.ops_per_sec, log(p.p50_ms))),
            color.stroke_width(2),
        ))
        .map_err(err)?
        .label(format!("{label} p50"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        c.draw_series(DashedLineSeries::new(
            pts.iter().map(|p| (p.ops_per_sec, log(p.p99_ms))),
            6,
            4,
            color.stroke_width(1),
        ))
        .map_err(err)?
        .label(format!("{label} p99"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        c.draw_series(pts.iter().map(|p| {
            EmptyElement::at((p.ops_per_sec, log(p.p50_ms)))
                + Circle::new((0, 0), 3, color.filled())
                + Text::new(p.tag.clone(), (5, -12), ("sans-serif", 11))
        }))
        .map_err(err)?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_labels() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let series: Vec<Second> = (1..=5)
            .map(|i| Second {
                t_s: i as f64,
                ops: 1000,
                errors: 0,
                ops_per_sec: 1000.0 * i as f64,
                p50_ms: 1.0,
                p99_ms: 3.0,
            })
            .collect();
        let t = dir.join("t.svg");
        timeline(&t, "a run", &series).expect("timeline");
        let text = std::fs::read_to_string(&t).expect("read svg");
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
        assert!(text.contains("ops/s") && text.contains("p99"));
        let pts = vec![
            Point {
                ops_per_sec: 500.0,
                p50_ms: 1.0,
                p99_ms: 2.0,
                tag: "c1".into(),
            },
            Point {
                ops_per_sec: 9000.0,
                p50_ms: 5.0,
                p99_ms: 20.0,
                tag: "c64".into(),
            },
        ];
        let s = dir.join("s.svg");
        curves(
            &s,
            "sweep",
            &[("ours".into(), pts.clone()), ("etcd".into(), pts)],
        )
        .expect("curves");
        let text = std::fs::read_to_string(&s).expect("read svg");
        assert!(text.contains("ours p50") && text.contains("etcd p99") && text.contains("c64"));
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
