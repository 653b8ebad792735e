//! A small SVG line chart: panels stacked vertically, each with its own y scale (from 0),
//! one shared x axis: minutes (the soak) or a log scale of sizes (growth curves). Enough for
//! a few hundred points; no dependency.

/// One panel: a title and named lines of (x, y) points.
pub struct Panel {
    pub title: &'static str,
    pub lines: Vec<(&'static str, Vec<(f64, f64)>)>,
}

const WIDTH: f64 = 820.0;
const PANEL_H: f64 = 150.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 45.0;
/// The shared x axis.
#[derive(Debug, Clone, Copy)]
pub enum XAxis {
    /// Linear from 0, labelled in minutes.
    Minutes,
    /// Logarithmic from the smallest x to the largest, ticks at powers of ten (1k, 1M, …).
    Log10,
}

const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

pub fn draw(panels: &[Panel], title: &str, axis: XAxis) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_H + GAP) + 10.0;
    let xs = || panels.iter().flat_map(|p| p.lines.iter().flat_map(|(_, pts)| pts.iter().map(|(x, _)| *x)));
    let x_max = xs().fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    // The log axis starts at the smallest x (at least 1).
    let x_min = xs().fold(f64::INFINITY, f64::min).max(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    // Where x lands, as a share of the plot's width.
    let place: Box<dyn Fn(f64) -> f64> = match axis {
        XAxis::Minutes => Box::new(move |x| x / x_max),
        XAxis::Log10 => {
            let span = (x_max.max(1.0).log10() - x_min.log10()).max(f64::MIN_POSITIVE);
            Box::new(move |x: f64| (x.max(1.0).log10() - x_min.log10()) / span)
        }
    };
    let x_labels: Vec<(f64, String)> = match axis {
        XAxis::Minutes => vec![(1.0, format!("{x_max:.1} min"))],
        XAxis::Log10 => {
            let mut ticks = Vec::new();
            let mut t = 10f64.powf(x_min.log10().ceil());
            while t <= x_max * 1.0001 {
                ticks.push((place(t), size(t)));
                t *= 10.0;
            }
            ticks
        }
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_H + GAP);
        let y_max = panel
            .lines
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|(_, y)| *y))
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.1;
        svg.push_str(&format!(
            "<text x=\"{LEFT}\" y=\"{}\" font-size=\"12\">{}</text>\n\
             <rect x=\"{LEFT}\" y=\"{top}\" width=\"{plot_w}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#999\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n",
            top - 6.0,
            escape(panel.title),
            LEFT - 4.0,
            top + 10.0,
            number(y_max),
            LEFT - 4.0,
            top + PANEL_H,
        ));
        for (at, label) in &x_labels {
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                (LEFT + at * plot_w).min(WIDTH - RIGHT - 20.0),
                top + PANEL_H + 14.0,
                escape(label)
            ));
        }
        for (j, (name, pts)) in panel.lines.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let points: Vec<String> = pts
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", LEFT + place(*x) * plot_w, top + PANEL_H - y / y_max * PANEL_H))
                .collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
                 <text x=\"{}\" y=\"{}\" fill=\"{color}\" text-anchor=\"end\">{}</text>\n",
                points.join(" "),
                LEFT + plot_w - 6.0,
                top + 14.0 + j as f64 * 13.0,
                escape(name)
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn number(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// 1000 → "1k", 1000000 → "1M".
fn size(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}G", v / 1e9),
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_points_into_the_panel() {
        let panels = [Panel { title: "a < b", lines: vec![("p99", vec![(0.0, 0.0), (2.0, 10.0)])] }];
        let svg = draw(&panels, "t", XAxis::Minutes);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt; b"));
        // x 0 → left edge at the bottom; x max → right edge at 1/1.1 of the height.
        assert!(svg.contains(&format!("{LEFT:.1},{:.1} ", TOP + PANEL_H)), "{svg}");
        assert!(svg.contains(&format!("{:.1},{:.1}", WIDTH - RIGHT, TOP + PANEL_H - PANEL_H / 1.1)), "{svg}");
    }

    #[test]
    fn log_axis_spreads_powers_of_ten_evenly() {
        let pts = vec![(1e3, 1.0), (1e4, 1.0), (1e5, 1.0)];
        let svg = draw(&[Panel { title: "p", lines: vec![("a", pts)] }], "t", XAxis::Log10);
        let mid = LEFT + (WIDTH - LEFT - RIGHT) / 2.0;
        assert!(svg.contains(&format!("{mid:.1},")), "10k sits in the middle: {svg}");
        assert!(svg.contains(">1k<") && svg.contains(">10k<") && svg.contains(">100k<"), "{svg}");
    }
}
