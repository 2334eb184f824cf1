//! A self-contained HTML report: latency over time and a latency histogram, drawn as inline
//! SVG (no scripts, no network).

use std::fmt::Write as _;

use crate::report::Report;

const W: f64 = 720.0;
const H: f64 = 240.0;
const PAD: f64 = 40.0;

/// Renders the report as an HTML page.
pub fn render(report: &Report, histogram: &[(f64, u64)]) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>rmb-loadtest {}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f4f4f4;padding:1em}}\
         svg{{background:#fff;border:1px solid #ccc}}</style></head><body>\
         <h1>rmb-loadtest: {}</h1><pre>{}</pre>",
        escape(&report.scenario),
        escape(&report.scenario),
        escape(&report.summary())
    );
    html.push_str("<h2>Latency over time (ms): p50 blue, p99 red</h2>");
    let p50: Vec<(f64, f64)> = report.seconds.iter().map(|s| (s.t as f64, s.p50)).collect();
    let p99: Vec<(f64, f64)> = report.seconds.iter().map(|s| (s.t as f64, s.p99)).collect();
    html.push_str(&line_chart(
        &[(&p50, "#1f77b4"), (&p99, "#d62728")],
        "second",
        "ms",
    ));
    html.push_str("<h2>Latency histogram (count per latency bucket, ms, log scale)</h2>");
    html.push_str(&bar_chart(histogram));
    html.push_str("</body></html>\n");
    html
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn line_chart(series: &[(&[(f64, f64)], &str)], xlabel: &str, ylabel: &str) -> String {
    let xmax = series
        .iter()
        .flat_map(|(s, _)| s.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(s, _)| s.iter().map(|p| p.1))
        .fold(0.001_f64, f64::max);
    let mut svg =
        format!("<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">");
    axes(&mut svg, xmax, ymax, xlabel, ylabel);
    for (points, color) in series {
        let coords: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x, xmax), sy(*y, ymax)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            coords.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

fn bar_chart(buckets: &[(f64, u64)]) -> String {
    let n = buckets.len().max(1) as f64;
    let ymax = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let mut svg =
        format!("<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">");
    axes(
        &mut svg,
        n,
        ymax.ln_1p(),
        "latency bucket upper bound (ms)",
        "log(count)",
    );
    let bw = (W - 2.0 * PAD) / n;
    for (i, (upper, count)) in buckets.iter().enumerate() {
        let h = (*count as f64).ln_1p() / ymax.ln_1p() * (H - 2.0 * PAD);
        let x = PAD + i as f64 * bw;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#2ca02c\"><title>≤{upper:.3} ms: {count}</title></rect>",
            H - PAD - h,
            (bw - 1.0).max(1.0)
        );
        if i % (buckets.len() / 8).max(1) == 0 {
            let _ = write!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"9\">{upper:.2}</text>",
                H - PAD + 12.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

fn axes(svg: &mut String, xmax: f64, ymax: f64, xlabel: &str, ylabel: &str) {
    let _ = write!(
        svg,
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#000\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#000\"/>\
         <text x=\"{r}\" y=\"{lb}\" font-size=\"11\" text-anchor=\"end\">{xlabel} (max {xmax:.0})</text>\
         <text x=\"4\" y=\"{t}\" font-size=\"11\">{ylabel} (max {ymax:.2})</text>",
        b = H - PAD,
        r = W - PAD,
        lb = H - 8.0,
        t = PAD - 10.0,
    );
}

fn sx(x: f64, xmax: f64) -> f64 {
    PAD + x / xmax * (W - 2.0 * PAD)
}

fn sy(y: f64, ymax: f64) -> f64 {
    H - PAD - y / ymax * (H - 2.0 * PAD)
}
