//! `--plot FILE.svg` or `FILE.png`: a title (the command, the rate asked for, the verdict) above three
//! charts: latency by percentile (corrected and uncorrected), latency over time (p50, p99 and
//! max per interval, where the breaking point of a ramp shows) and throughput over time. The
//! legends say what each latency is measured from in this scenario. Drawn with plotters: SVG, or
//! PNG with the DejaVu Sans font embedded here (so a machine without fonts draws text too).

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::LoadReport;
use super::Scenario;

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

/// What the corrected and the uncorrected latency count from, in this report's scenario.
pub(crate) fn latency_legends(report: &LoadReport) -> (&'static str, &'static str) {
    match report.scenario {
        Scenario::Subscribe => (
            "from the timestamp in each frame to its arrival",
            "(none: no schedule)",
        ),
        Scenario::Echo => (
            "corrected: from each message's intended send time to its reply",
            "uncorrected: from its actual send to its reply",
        ),
        Scenario::Publish => (
            "corrected: from each event's intended publish time to its delivery",
            "uncorrected: from its actual publish to its delivery",
        ),
        Scenario::Connect => (
            "corrected: from each connection's intended start to its 101",
            "uncorrected: from its actual connect to its 101",
        ),
    }
}

/// The picture's size in pixels.
const SIZE: (u32, u32) = (1100, 1130);

/// The font text is measured with, and drawn in for PNG (SVG names the families and leaves
/// the glyphs to the viewer).
static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Draws the report into `path`: PNG if it ends in `.png`, else SVG.
pub fn draw(report: &LoadReport, path: &Path) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("--plot `{}`: {e}", path.display());
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    // Text is laid out with this font in both formats (plotters measures it to place labels).
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        for family in ["sans-serif", "monospace"] {
            // The font is valid; were it not (a build mistake), drawing fails with plotters'
            // font error, named in the message.
            let _ = plotters::style::register_font(family, FontStyle::Normal, FONT);
        }
    });
    if png {
        draw_on(BitMapBackend::new(path, SIZE).into_drawing_area(), report).map_err(|e| fail(&e))
    } else {
        draw_on(SVGBackend::new(path, SIZE).into_drawing_area(), report).map_err(|e| fail(&e))
    }
}

/// Latencies in microseconds are shown in milliseconds once they reach 10 ms.
fn latency_scale(max_us: f64) -> (f64, &'static str) {
    if max_us >= 10_000.0 {
        (1e3, "milliseconds")
    } else {
        (1.0, "microseconds")
    }
}

fn draw_on<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, report: &LoadReport) -> Drawn
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(92);
    title(&head, report)?;
    let (top, rest) = body.split_vertically(380);
    let (middle, bottom) = rest.split_vertically(340);
    by_percentile(&top, report)?;
    over_time(&middle, report)?;
    throughput(&bottom, report)?;
    root.present()?;
    Ok(())
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// One of a series point's latencies.
type PointValue = fn(&super::report::Point) -> f64;

/// The command (cut to fit), the rate asked for and the verdict.
fn title<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, r: &LoadReport) -> Drawn
where
    DB::ErrorType: 'static,
{
    let scenario = serde_json::to_value(r.scenario)?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rate = r
        .generator
        .as_ref()
        .map_or(String::new(), |g| format!(", target rate {}", g.rate));
    let verdict = if r.failed.is_empty() {
        "pass".to_owned()
    } else {
        r.failed
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let line1 = format!(
        "floodgate load {scenario}: {} connections to {}{rate}",
        r.connections, r.url
    );
    let line2 = format!(
        "achieved {:.0}/s over {:.1} s; verdict {verdict} (exit {})",
        r.events_per_sec, r.elapsed_sec, r.exit_code
    );
    let colour = if r.failed.is_empty() { BLACK } else { RED };
    area.draw(&Text::new(
        line1,
        (16, 8),
        ("sans-serif", 17).into_font().color(&BLACK),
    ))?;
    area.draw(&Text::new(
        line2,
        (16, 30),
        ("sans-serif", 17).into_font().color(&colour),
    ))?;
    // The command, on at most two lines of 140 characters.
    let chars: Vec<char> = format!("$ {}", r.command).chars().collect();
    if !r.command.is_empty() {
        for (i, chunk) in chars.chunks(140).take(2).enumerate() {
            let mut text: String = chunk.iter().collect();
            if i == 1 && chars.len() > 280 {
                text.push_str("...");
            }
            area.draw(&Text::new(
                text,
                (16, 54 + 16 * i as i32),
                ("monospace", 13).into_font().color(&BLACK.mix(0.75)),
            ))?;
        }
    }
    Ok(())
}

fn by_percentile<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &LoadReport) -> Drawn
where
    DB::ErrorType: 'static,
{
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
    let top = corrected
        .iter()
        .chain(&uncorrected)
        .map(|p| p.1)
        .fold(1.0, f64::max);
    let (div, unit) = latency_scale(top);
    let scaled = |v: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        v.into_iter().map(|(x, y)| (x, y / div)).collect()
    };
    let (corrected, uncorrected) = (scaled(corrected), scaled(uncorrected));
    let ymax = top / div * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("latency by percentile, whole run ({unit})"),
            ("sans-serif", 17),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5f64, 0f64..ymax)?;
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
        .y_desc(unit)
        .draw()?;
    let (c_text, u_text) = latency_legends(report);
    if corrected.is_empty() {
        chart.draw_series(std::iter::once(Text::new(
            "latency not measured (no timestamp field, or nothing arrived)",
            (0.2, ymax / 2.0),
            ("sans-serif", 15),
        )))?;
    } else {
        chart
            .draw_series(LineSeries::new(corrected, RED.stroke_width(2)))?
            .label(c_text)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    if !uncorrected.is_empty() {
        chart
            .draw_series(LineSeries::new(uncorrected, &BLUE))?
            .label(u_text)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    Ok(())
}

fn over_time<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &LoadReport) -> Drawn
where
    DB::ErrorType: 'static,
{
    let tmax = report.series.last().map_or(1.0, |p| p.t).max(1.0);
    let top = report.series.iter().map(|p| p.max_us).fold(1.0, f64::max);
    let (div, unit) = latency_scale(top);
    let ymax = top / div * 1.1;
    let (c_text, _) = latency_legends(report);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("latency per interval ({unit}), {c_text}"),
            ("sans-serif", 15),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(unit)
        .draw()?;
    let lines: [(&str, RGBColor, PointValue); 3] = [
        ("max", RED, |p| p.max_us),
        ("p99", MAGENTA, |p| p.p99_us),
        ("p50", BLUE, |p| p.p50_us),
    ];
    for (name, colour, value) in lines {
        chart
            .draw_series(LineSeries::new(
                report.series.iter().map(|p| (p.t, value(p) / div)),
                colour.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    Ok(())
}

fn throughput<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &LoadReport) -> Drawn
where
    DB::ErrorType: 'static,
{
    let tmax = report.series.last().map_or(1.0, |p| p.t).max(1.0);
    let rmax = report.series.iter().map(|p| p.rate).fold(1.0, f64::max) * 1.1;
    let unit = match report.scenario {
        Scenario::Subscribe | Scenario::Publish => "events",
        Scenario::Echo => "replies",
        Scenario::Connect => "connections",
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("throughput per interval ({unit} per second; the last interval counts only the time it covered)"),
            ("sans-serif", 15),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, 0f64..rmax)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()?;
    chart.draw_series(LineSeries::new(
        report.series.iter().map(|p| (p.t, p.rate)),
        GREEN.stroke_width(2),
    ))?;
    Ok(())
}
