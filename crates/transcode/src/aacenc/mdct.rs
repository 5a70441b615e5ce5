//! The forward MDCT of AAC's long blocks (2048 samples in, 1024 coefficients out), computed as a
//! DCT-IV through a complex FFT of a quarter of the length (rustfft).

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

pub(crate) struct Mdct {
    /// Input length (2 × the coefficients).
    n: usize,
    fft: Arc<dyn Fft<f32>>,
    /// e^(−iπn/M) before the FFT and e^(−iπ(4k+1)/4M) after it.
    pre: Vec<Complex32>,
    post: Vec<Complex32>,
    rotated: Vec<f32>,
    buf: Vec<Complex32>,
    scratch: Vec<Complex32>,
}

impl Mdct {
    pub(crate) fn new(n: usize) -> Mdct {
        let m = n / 2;
        let fft = FftPlanner::new().plan_fft_forward(m / 2);
        let turn = |a: f64| Complex32::new(a.cos() as f32, a.sin() as f32);
        let pi = std::f64::consts::PI;
        let pre = (0..m / 2)
            .map(|n| turn(-pi * n as f64 / m as f64))
            .collect();
        let post = (0..m / 2)
            .map(|k| turn(-pi * (4 * k + 1) as f64 / (4 * m) as f64))
            .collect();
        let scratch = vec![Complex32::default(); fft.get_inplace_scratch_len()];
        Mdct {
            n,
            fft,
            pre,
            post,
            rotated: vec![0.0; m],
            buf: vec![Complex32::default(); m / 2],
            scratch,
        }
    }

    /// `out[k] = Σ x[i]·cos(π/M·(i + ½ + M/2)·(k + ½))` for k < M = N/2, x of length N.
    pub(crate) fn forward(&mut self, x: &[f32], out: &mut [f32]) {
        let m = self.n / 2;
        let h = m / 2;
        debug_assert_eq!(x.len(), self.n);
        debug_assert_eq!(out.len(), m);
        // The MDCT of (a, b, c, d) is the DCT-IV of (−c_r − d, a − b_r).
        for i in 0..h {
            self.rotated[i] = -x[3 * h - 1 - i] - x[3 * h + i];
        }
        for j in 0..h {
            self.rotated[h + j] = x[j] - x[m - 1 - j];
        }
        let t = &self.rotated;
        for k in 0..h {
            self.buf[k] = Complex32::new(t[2 * k], t[m - 1 - 2 * k]) * self.pre[k];
        }
        self.fft
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        for k in 0..h {
            let y = self.buf[k] * self.post[k];
            out[2 * k] = y.re;
            out[m - 1 - 2 * k] = -y.im;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        for n in [16usize, 64, 2048] {
            let m = n / 2;
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let mut fast = vec![0.0; m];
            Mdct::new(n).forward(&x, &mut fast);
            let mut worst = 0f64;
            for (k, f) in fast.iter().enumerate() {
                let mut s = 0f64;
                for (i, v) in x.iter().enumerate() {
                    s += f64::from(*v)
                        * (std::f64::consts::PI / m as f64
                            * (i as f64 + 0.5 + m as f64 / 2.0)
                            * (k as f64 + 0.5))
                            .cos();
                }
                worst = worst.max((s - f64::from(*f)).abs());
            }
            assert!(worst < 1e-3 * n as f64, "n {n}: off by {worst}");
        }
    }
}
