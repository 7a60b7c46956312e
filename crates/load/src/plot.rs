//! `--plot FILE.svg`: latency by percentile (corrected and uncorrected) above throughput over
//! time, drawn with plotters' SVG backend.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::report::LoadReport;

/// Percentiles along the x axis, as "nines": x = -log10(1 - p), so 90 % is 1, 99 % is 2 and
/// 99.99 % is 4.
fn nines_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=50)
        .map(|i| {
            let x = f64::from(i) * 0.1; // 0 .. 5 nines
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1e3)
        })
        .collect()
}

/// Draws the report's histograms and series into an SVG file.
pub fn draw(report: &LoadReport, path: &Path) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("--plot `{}`: {e}", path.display());
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (top, bottom) = root.split_vertically(400);

    let (corrected, uncorrected) = match &report.hist {
        Some(r) => (
            nines_curve(&r.corrected),
            if report.uncorrected_latency_us.is_some() {
                nines_curve(&r.uncorrected)
            } else {
                Vec::new()
            },
        ),
        None => (Vec::new(), Vec::new()),
    };
    let ymax = corrected
        .iter()
        .chain(&uncorrected)
        .map(|p| p.1)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption("latency by percentile (us)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5f64, 0f64..ymax)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| match x.round() as i32 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => "99.999%".into(),
        })
        .x_labels(6)
        .y_desc("microseconds")
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new(corrected, &RED))
        .map_err(|e| fail(&e))?
        .label("corrected (from intended time)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    if !uncorrected.is_empty() {
        chart
            .draw_series(LineSeries::new(uncorrected, &BLUE))
            .map_err(|e| fail(&e))?
            .label("uncorrected (from actual send)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| fail(&e))?;

    let tmax = report.series.last().map_or(1.0, |p| p.t).max(1.0);
    let rmax = report.series.iter().map(|p| p.rate).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("throughput per interval (per second)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, 0f64..rmax)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new(
            report.series.iter().map(|p| (p.t, p.rate)),
            &GREEN.mix(0.9),
        ))
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
