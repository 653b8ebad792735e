//! Robust statistics for anomaly detection: median, MAD, and a robust z-score.

/// The median of `xs` (None when empty).
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Median absolute deviation from the median.
pub fn mad(xs: &[f64]) -> Option<f64> {
    let m = median(xs)?;
    median(&xs.iter().map(|x| (x - m).abs()).collect::<Vec<_>>())
}

/// How unusual `x` is against `baseline`: |x − median| / max(1.4826·MAD, floor). The floor
/// keeps a perfectly steady baseline (MAD 0) from turning any wobble into an anomaly.
pub fn robust_score(baseline: &[f64], x: f64, floor: f64) -> Option<(f64, f64)> {
    let m = median(baseline)?;
    let scale = (1.4826 * mad(baseline)?).max(floor).max(f64::EPSILON);
    Some(((x - m).abs() / scale, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(mad(&[1.0, 1.0, 2.0, 2.0, 4.0, 6.0, 9.0]), Some(1.0));
        assert_eq!(median(&[]), None);
        let steady = [10.0, 11.0, 9.0, 10.0, 10.0, 12.0, 9.0, 10.0, 11.0, 10.0];
        let (s, m) = robust_score(&steady, 11.0, 1.0).expect("score");
        assert!(s <= 1.0 && m == 10.0);
        let (s, _) = robust_score(&steady, 60.0, 1.0).expect("score");
        assert!(s > 20.0);
        let flat = [5.0; 20];
        assert!(robust_score(&flat, 6.0, 1.0).expect("score").0 <= 1.0, "the floor absorbs small wobbles");
    }
}
