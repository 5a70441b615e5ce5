//! What the bridge's tests share: where a tone's energy is.

/// Power of `pcm` (mono, 48 kHz) at `freq` (Goertzel).
pub fn power(pcm: &[f32], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 48_000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s = f64::from(x) + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

/// The strongest frequency of `pcm` between 200 Hz and 4 kHz, in 5 Hz steps.
pub fn peak(pcm: &[f32]) -> f64 {
    (40..800)
        .map(|i| f64::from(i) * 5.0)
        .max_by(|a, b| power(pcm, *a).total_cmp(&power(pcm, *b)))
        .unwrap_or(0.0)
}
