//! A small SVG line chart: panels stacked vertically, each with its own y scale (from 0),
//! one shared x axis in minutes. Enough for the soak's few hundred points; no dependency.

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
const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

pub fn draw(panels: &[Panel], title: &str) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_H + GAP) + 10.0;
    let x_max = panels
        .iter()
        .flat_map(|p| p.lines.iter().flat_map(|(_, pts)| pts.iter().map(|(x, _)| *x)))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    let plot_w = WIDTH - LEFT - RIGHT;
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
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1} min</text>\n",
            top - 6.0,
            escape(panel.title),
            LEFT - 4.0,
            top + 10.0,
            number(y_max),
            LEFT - 4.0,
            top + PANEL_H,
            LEFT + plot_w,
            top + PANEL_H + 14.0,
            x_max,
        ));
        for (j, (name, pts)) in panel.lines.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let points: Vec<String> = pts
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", LEFT + x / x_max * plot_w, top + PANEL_H - y / y_max * PANEL_H))
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

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_points_into_the_panel() {
        let panels = [Panel { title: "a < b", lines: vec![("p99", vec![(0.0, 0.0), (2.0, 10.0)])] }];
        let svg = draw(&panels, "t");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt; b"));
        // x 0 → left edge at the bottom; x max → right edge at 1/1.1 of the height.
        assert!(svg.contains(&format!("{LEFT:.1},{:.1} ", TOP + PANEL_H)), "{svg}");
        assert!(svg.contains(&format!("{:.1},{:.1}", WIDTH - RIGHT, TOP + PANEL_H - PANEL_H / 1.1)), "{svg}");
    }
}
