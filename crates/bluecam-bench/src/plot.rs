//! The SVG plot of a relay sweep: latency (p50 and p99, log scale) against offered load, one
//! colour per server.

use plotters::prelude::*;

/// One server's sweep: (offered deliveries/s, p50 ms, p99 ms) per point.
pub(super) struct Series {
    pub(super) name: String,
    pub(super) points: Vec<(f64, f64, f64)>,
}

pub(super) fn latency_against_load(
    path: &std::path::Path,
    title: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = all().map(|p| p.0).fold(0.0, f64::max) * 1.05;
    let y_min = all()
        .map(|p| p.1.min(p.2))
        .fold(f64::MAX, f64::min)
        .max(0.01)
        / 1.5;
    let y_max = all()
        .map(|p| p.1.max(p.2))
        .fold(0.0, f64::max)
        .max(y_min * 10.0)
        * 1.5;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max.max(1.0), (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .x_desc("offered load (deliveries/s)")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    let colours = [
        RGBColor(0x1f, 0x5f, 0xbf),
        RGBColor(0x80, 0x80, 0x80),
        RGBColor(0xc0, 0x50, 0x20),
        RGBColor(0x30, 0x90, 0x40),
    ];
    for (s, &colour) in series.iter().zip(colours.iter().cycle()) {
        let p99: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.2)).collect();
        let p50: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(p99.clone(), colour.stroke_width(2)))?
            .label(format!("{} p99", s.name))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(PointSeries::of_element(
            p99,
            4,
            colour.filled(),
            &|c, size, style| Circle::new(c, size, style),
        ))?;
        chart
            .draw_series(DashedLineSeries::new(
                p50.clone(),
                6,
                4,
                colour.stroke_width(1),
            ))?
            .label(format!("{} p50", s.name))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(1)));
        chart.draw_series(PointSeries::of_element(
            p50,
            3,
            colour.stroke_width(1),
            &|c, size, style| Circle::new(c, size, style),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
