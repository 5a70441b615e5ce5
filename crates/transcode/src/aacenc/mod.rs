//! Tidegate's own AAC-LC encoder (ISO/IEC 14496-3 subpart 4), for the audio bridge's Opus → AAC
//! direction: WHIP publishers (Opus) read over RTMP and HLS-TS, whose players take AAC.
//!
//! Why our own: no AAC encoder can be had here that keeps the README's first command building
//! on a fresh machine without cmake and the licence clean (FDK-AAC is not free for Debian, faac
//! is not in Debian main, libavcodec's structures move between FFmpeg versions); see
//! docs/design.md, "The audio bridge".
//!
//! What it does: long blocks only (2048-sample sine-windowed MDCT), one scalefactor per band
//! chosen for a constant signal-to-noise ratio over an absolute floor, that ratio searched per
//! frame to fit the bit rate (with a bit reservoir), every spectrum codebook with sections
//! chosen by dynamic programming, channels coded independently (mono: SCE, stereo: CPE with a
//! common window, no M/S). No short blocks, TNS or M/S: transients pre-echo a little more than
//! with a full encoder; for a relay at 96–192 kbit/s that is the trade for a small, safe
//! encoder.
//!
//! Output: raw AAC frames (no ADTS), one per 1024 input samples per channel; frame k decodes to
//! the input's block k − 1 (one frame of delay, the MDCT's overlap).

mod mdct;
mod tables;

use crate::TranscodeError;
use mdct::Mdct;
use tidegate_codec::bits::BitWriter;

/// Samples per channel per frame.
pub const FRAME: usize = 1024;

/// Scalefactor band offsets of long windows at 44.1 and 48 kHz (49 bands).
const SWB_48: [u16; 50] = [
    0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 56, 64, 72, 80, 88, 96, 108, 120, 132, 144, 160,
    176, 196, 216, 240, 264, 292, 320, 352, 384, 416, 448, 480, 512, 544, 576, 608, 640, 672, 704,
    736, 768, 800, 832, 864, 896, 928, 1024,
];

/// Largest quantised magnitude codebook 11's escape can carry.
const MAX_Q: i32 = 8191;
/// Largest codeword magnitude per codebook 1..=11 (codebook 11 escapes above 15).
const LAV: [i32; 11] = [1, 1, 2, 2, 4, 4, 7, 7, 12, 12, 16];
/// Longest raw_data_block per channel, in bits (the decoder's input buffer).
const MAX_BITS_PER_CHANNEL: usize = 6144;
/// Scaling from ±1.0 PCM to the spectrum the standard's decoder expects: 16-bit PCM units, and
/// the factor 2 of the standard's forward transform over [`Mdct::forward`].
const SCALE: f32 = 2.0 * 32768.0;

pub struct Encoder {
    channels: usize,
    sample_rate: u32,
    /// Coded bands (those below the bandwidth).
    max_sfb: usize,
    /// Average bits per frame for all channels.
    bits_per_frame: usize,
    reservoir: usize,
    max_reservoir: usize,
    window: Vec<f32>,
    mdct: Mdct,
    /// Per channel: the previous block and the current one (2048 samples, windowed in place
    /// into `windowed`).
    history: Vec<Vec<f32>>,
    windowed: Vec<f32>,
    spectra: Vec<Vec<f32>>,
    /// |x|^(3/4) of each spectrum (quantisation works on it), below the bandwidth.
    powered: Vec<Vec<f32>>,
    /// Per channel and band: (energy per coefficient, mean magnitude, peak magnitude).
    bands: Vec<[(f32, f32, f32); 49]>,
    /// Last frame's ratio (dB), the next search's start.
    last_snr: f32,
    /// Per band: noise power per coefficient below the threshold of hearing.
    hearing: Vec<f32>,
}

/// One channel's coding decisions for a frame.
#[derive(Clone)]
struct Channel {
    q: Vec<i32>,
    sf: Vec<i32>,
    cb: Vec<u8>,
    sections: Vec<(u8, usize)>,
    global_gain: i32,
    bits: usize,
}

impl Encoder {
    /// A 48 or 44.1 kHz mono or stereo encoder at `bitrate` bit/s (all channels).
    pub fn new(sample_rate: u32, channels: u8, bitrate: u32) -> Result<Encoder, TranscodeError> {
        if sample_rate != 48_000 && sample_rate != 44_100 {
            return Err(TranscodeError::Unsupported(format!(
                "the AAC encoder takes 44.1 or 48 kHz, not {sample_rate} Hz"
            )));
        }
        if !(1..=2).contains(&channels) {
            return Err(TranscodeError::Unsupported(format!(
                "the AAC encoder takes mono or stereo, not {channels} channels"
            )));
        }
        let channels = usize::from(channels);
        let bitrate = bitrate.clamp(8_000 * channels as u32, 288_000 * channels as u32);
        let bits_per_frame = (u64::from(bitrate) * FRAME as u64 / u64::from(sample_rate)) as usize;
        // Bandwidth from the bit rate per channel (about 17 kHz at 64 kbit/s per channel).
        let per_channel = bitrate as f32 / channels as f32;
        let cutoff = (3_000.0 + per_channel * 0.22).min(20_000.0);
        let cutoff_bin = (cutoff / (sample_rate as f32 / 2.0) * FRAME as f32) as u16;
        let max_sfb = SWB_48
            .iter()
            .position(|&o| o >= cutoff_bin)
            .unwrap_or(SWB_48.len() - 1)
            .max(1);
        let n = 2 * FRAME;
        let window = (0..n)
            .map(|i| (std::f32::consts::PI * (i as f32 + 0.5) / n as f32).sin())
            .collect();
        Ok(Encoder {
            channels,
            sample_rate,
            max_sfb,
            bits_per_frame,
            reservoir: 0,
            max_reservoir: (MAX_BITS_PER_CHANNEL * channels).saturating_sub(bits_per_frame),
            window,
            mdct: Mdct::new(n),
            history: vec![vec![0.0; n]; channels],
            windowed: vec![0.0; n],
            spectra: vec![vec![0.0; FRAME]; channels],
            powered: vec![vec![0.0; FRAME]; channels],
            bands: vec![[(0.0, 0.0, 0.0); 49]; channels],
            last_snr: 20.0,
            hearing: hearing(sample_rate),
        })
    }

    pub fn channels(&self) -> u8 {
        self.channels as u8
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The AudioSpecificConfig: AAC-LC, this rate and channel layout, 1024-sample frames.
    pub fn audio_specific_config(&self) -> Vec<u8> {
        let index: u16 = if self.sample_rate == 48_000 { 3 } else { 4 };
        let v: u16 = (2 << 11) | (index << 7) | ((self.channels as u16) << 3);
        v.to_be_bytes().to_vec()
    }

    /// Encodes one block (FRAME samples per channel, planar, ±1.0) and returns one raw AAC
    /// frame.
    pub fn encode(&mut self, pcm: &[&[f32]]) -> Vec<u8> {
        debug_assert_eq!(pcm.len(), self.channels);
        for (ch, input) in pcm.iter().enumerate() {
            let h = &mut self.history[ch];
            h.copy_within(FRAME.., 0);
            for (d, s) in h[FRAME..].iter_mut().zip(input.iter()) {
                *d = s.clamp(-1.0, 1.0) * SCALE;
            }
            for ((w, x), win) in self.windowed.iter_mut().zip(h.iter()).zip(&self.window) {
                *w = x * win;
            }
            self.mdct.forward(&self.windowed, &mut self.spectra[ch]);
            // What every quantisation attempt of this frame needs, once.
            let top = usize::from(SWB_48[self.max_sfb]);
            let x = &self.spectra[ch];
            for (p, v) in self.powered[ch][..top].iter_mut().zip(&x[..top]) {
                *p = v.abs().powf(0.75);
            }
            for b in 0..self.max_sfb {
                let (s, e) = (usize::from(SWB_48[b]), usize::from(SWB_48[b + 1]));
                let (mut energy, mut sum, mut peak) = (0f32, 0f32, 0f32);
                for v in &x[s..e] {
                    energy += v * v;
                    sum += v.abs();
                    peak = peak.max(v.abs());
                }
                let w = (e - s) as f32;
                self.bands[ch][b] = (energy / w, sum / w, peak);
            }
        }
        let budget = (self.bits_per_frame + self.reservoir / 2)
            .min(MAX_BITS_PER_CHANNEL * self.channels)
            - self.overhead_bits();
        let coded = self.fit(budget);
        let used: usize = coded.iter().map(|c| c.bits).sum::<usize>() + self.overhead_bits();
        self.reservoir = (self.reservoir + self.bits_per_frame)
            .saturating_sub(used)
            .min(self.max_reservoir);
        self.write(&coded)
    }

    /// Bits of the frame outside the channels' own streams (element headers, END, alignment
    /// slack).
    fn overhead_bits(&self) -> usize {
        if self.channels == 1 {
            3 + 4 + 11 + 3 + 7
        } else {
            3 + 4 + 1 + 11 + 2 + 3 + 7
        }
    }

    /// The highest signal-to-noise ratio (within 1.5 dB) whose frame fits `budget` bits: a
    /// bracket around last frame's ratio (most frames need a step or two), then bisection.
    fn fit(&mut self, budget: usize) -> Vec<Channel> {
        const LOWEST: f32 = -20.0;
        const HIGHEST: f32 = 80.0;
        let mut best: Option<Vec<Channel>> = None;
        let mut lo = LOWEST;
        let mut hi = HIGHEST;
        // Tries `snr`: keeps the frame and raises `lo` when it fits, else lowers `hi`.
        let attempt = |snr: f32, best: &mut Option<Vec<Channel>>, lo: &mut f32, hi: &mut f32| {
            let coded = self.quantise_all(snr);
            if coded.iter().map(|c| c.bits).sum::<usize>() <= budget {
                *lo = snr;
                *best = Some(coded);
                true
            } else {
                *hi = snr;
                false
            }
        };
        let start = self.last_snr.clamp(LOWEST, HIGHEST);
        let mut step = 3.0;
        let mut snr = start;
        let mut tries = 1;
        if attempt(start, &mut best, &mut lo, &mut hi) {
            while snr < HIGHEST {
                snr = (snr + step).min(HIGHEST);
                step *= 2.0;
                tries += 1;
                if !attempt(snr, &mut best, &mut lo, &mut hi) {
                    break;
                }
            }
        } else {
            while snr > LOWEST {
                snr = (snr - step).max(LOWEST);
                step *= 2.0;
                tries += 1;
                if attempt(snr, &mut best, &mut lo, &mut hi) {
                    break;
                }
            }
        }
        while best.is_some() && hi - lo > 1.5 && tries < 10 {
            tries += 1;
            attempt((lo + hi) / 2.0, &mut best, &mut lo, &mut hi);
        }
        let coded = match best {
            Some(c) => c,
            None => {
                // Even the lowest ratio is too big: drop the top bands until it fits.
                let mut c = self.quantise_all(lo);
                for ch in &mut c {
                    let mut sfb = self.max_sfb;
                    while ch.bits > budget / self.channels && sfb > 1 {
                        sfb -= 1;
                        for k in usize::from(SWB_48[sfb])..FRAME {
                            ch.q[k] = 0;
                        }
                        self.finish_channel(ch);
                    }
                }
                c
            }
        };
        self.last_snr = lo;
        coded
    }

    fn quantise_all(&self, snr_db: f32) -> Vec<Channel> {
        (0..self.channels)
            .map(|ch| {
                let mut c = self.quantise(ch, snr_db);
                self.finish_channel(&mut c);
                c
            })
            .collect()
    }

    /// Scalefactors and quantised values of one channel for a signal-to-noise ratio.
    ///
    /// The noise each band may carry is its energy less `snr_db`, spread to the neighbouring
    /// bands (a loud band masks its neighbours: 10 dB less per band upwards, 20 dB less per
    /// band downwards), and never below the threshold of hearing; a band whose energy is below
    /// what it may carry is not coded.
    fn quantise(&self, ch: usize, snr_db: f32) -> Channel {
        let x = &self.spectra[ch];
        let p = &self.powered[ch];
        let ratio = 10f32.powf(-snr_db / 10.0);
        let bands = self.max_sfb;
        let stats = &self.bands[ch];
        let mut allowed = [0f32; 49];
        for b in 0..bands {
            allowed[b] = stats[b].0 * ratio;
        }
        for b in 1..bands {
            allowed[b] = allowed[b].max(allowed[b - 1] * 0.1);
        }
        for b in (0..bands.saturating_sub(1)).rev() {
            allowed[b] = allowed[b].max(allowed[b + 1] * 0.01);
        }
        let mut q = vec![0i32; FRAME];
        let mut sf = vec![0i32; self.max_sfb];
        let mut prev: Option<i32> = None;
        for b in 0..self.max_sfb {
            let (s, e) = (usize::from(SWB_48[b]), usize::from(SWB_48[b + 1]));
            let (energy, mean, peak) = stats[b];
            let noise = allowed[b].max(self.hearing[b]);
            if energy <= noise || peak == 0.0 {
                continue;
            }
            // Noise of the x^(3/4) quantiser at step A near the band's mean magnitude m:
            // (4/27)·√m·A^(3/2); solve for A, then A = 2^((sf − 100)/4).
            let mean = mean.max(1e-3);
            let a = (27.0 * noise / (4.0 * mean.sqrt())).powf(2.0 / 3.0);
            let mut s_f = (100.0 + 4.0 * a.log2()).round() as i32;
            // No value past the escape's reach.
            let min_sf =
                (100.0 + 4.0 * (peak / (MAX_Q as f32).powf(4.0 / 3.0)).log2()).ceil() as i32;
            s_f = s_f.max(min_sf).clamp(0, 255);
            if let Some(pv) = prev {
                s_f = s_f.clamp(pv - 60, pv + 60);
            }
            let inv = 2f32.powf(-0.1875 * (s_f - 100) as f32);
            let mut any = false;
            for k in s..e {
                let m = ((p[k] * inv + 0.4054) as i32).min(MAX_Q);
                if m != 0 {
                    any = true;
                    q[k] = if x[k] < 0.0 { -m } else { m };
                }
            }
            if any {
                sf[b] = s_f;
                prev = Some(s_f);
            }
        }
        Channel {
            q,
            sf,
            cb: Vec::new(),
            sections: Vec::new(),
            global_gain: 0,
            bits: 0,
        }
    }

    /// Chooses codebooks and sections for a channel's quantised values and counts its bits.
    fn finish_channel(&self, c: &mut Channel) {
        let bands = self.max_sfb;
        // Cost of each codebook per band (None: cannot carry the band).
        let mut cost = vec![[None::<usize>; 12]; bands];
        for b in 0..bands {
            let (s, e) = (usize::from(SWB_48[b]), usize::from(SWB_48[b + 1]));
            let peak = c.q[s..e].iter().map(|v| v.abs()).max().unwrap_or(0);
            if peak == 0 {
                cost[b][0] = Some(0);
                continue;
            }
            // The four smallest codebooks that can carry the band (larger ones cost more).
            for book in (1..=11u8)
                .filter(|&k| LAV[usize::from(k) - 1] >= peak.min(16))
                .take(4)
            {
                cost[b][usize::from(book)] = Some(spectral_bits(book, &c.q[s..e]));
            }
        }
        // Sections: dynamic programming over (band, codebook); a section costs 9 bits.
        let mut best = vec![[usize::MAX; 12]; bands];
        let mut from = vec![[0u8; 12]; bands];
        for b in 0..bands {
            let cheapest_before = if b == 0 {
                (0usize, 0u8)
            } else {
                (0..12u8)
                    .filter(|&k| best[b - 1][usize::from(k)] != usize::MAX)
                    .map(|k| (best[b - 1][usize::from(k)], k))
                    .min()
                    .unwrap_or((usize::MAX, 0))
            };
            for book in 0..12usize {
                let Some(here) = cost[b][book] else { continue };
                let mut v = cheapest_before.0.saturating_add(9 + here);
                let mut f = cheapest_before.1;
                if b > 0 && best[b - 1][book] != usize::MAX && best[b - 1][book] + here <= v {
                    v = best[b - 1][book] + here;
                    f = book as u8;
                }
                best[b][book] = v;
                from[b][book] = f;
            }
        }
        // Walk back.
        let mut cb = vec![0u8; bands];
        let mut book = (0..12u8)
            .filter(|&k| best[bands - 1][usize::from(k)] != usize::MAX)
            .min_by_key(|&k| best[bands - 1][usize::from(k)])
            .unwrap_or(0);
        for b in (0..bands).rev() {
            cb[b] = book;
            book = from[b][usize::from(book)];
        }
        let mut sections: Vec<(u8, usize)> = Vec::new();
        for &k in &cb {
            match sections.last_mut() {
                Some((last, n)) if *last == k => *n += 1,
                _ => sections.push((k, 1)),
            }
        }
        // Scalefactors: bands coded with codebook 0 carry none; the first is global_gain.
        let global_gain = cb
            .iter()
            .zip(&c.sf)
            .find(|(k, _)| **k != 0)
            .map_or(100, |(_, s)| *s);
        let mut bits = 8 + 3; // global_gain; pulse, TNS and gain-control flags
        for &(_, n) in &sections {
            bits += 4 + 5 * (n / 31 + 1);
        }
        let mut last = global_gain;
        for b in 0..bands {
            if cb[b] != 0 {
                let d = c.sf[b] - last;
                bits += usize::from(tables::SCALEFACTOR[(d + 60) as usize].1);
                last = c.sf[b];
                bits += cost[b][usize::from(cb[b])].unwrap_or(0);
            }
        }
        c.cb = cb;
        c.sections = sections;
        c.global_gain = global_gain;
        c.bits = bits;
    }

    fn write(&self, coded: &[Channel]) -> Vec<u8> {
        let mut w = BitWriter::default();
        if self.channels == 1 {
            w.put(0, 3); // SCE
            w.put(0, 4);
            self.write_channel(&mut w, &coded[0], false);
        } else {
            w.put(1, 3); // CPE
            w.put(0, 4);
            w.put(1, 1); // common_window
            self.write_ics_info(&mut w);
            w.put(0, 2); // ms_mask_present
            for c in coded {
                self.write_channel(&mut w, c, true);
            }
        }
        w.put(7, 3); // END
        w.finish()
    }

    fn write_ics_info(&self, w: &mut BitWriter) {
        w.put(0, 1); // reserved
        w.put(0, 2); // ONLY_LONG_SEQUENCE
        w.put(0, 1); // sine window
        w.put(self.max_sfb as u32, 6);
        w.put(0, 1); // predictor_data_present
    }

    fn write_channel(&self, w: &mut BitWriter, c: &Channel, common_window: bool) {
        w.put(c.global_gain as u32, 8);
        if !common_window {
            self.write_ics_info(w);
        }
        for &(book, n) in &c.sections {
            w.put(u32::from(book), 4);
            let mut left = n;
            while left >= 31 {
                w.put(31, 5);
                left -= 31;
            }
            w.put(left as u32, 5);
        }
        let mut last = c.global_gain;
        for b in 0..self.max_sfb {
            if c.cb[b] != 0 {
                let (code, len) = tables::SCALEFACTOR[(c.sf[b] - last + 60) as usize];
                w.put(code, len);
                last = c.sf[b];
            }
        }
        w.put(0, 1); // pulse_data_present
        w.put(0, 1); // tns_data_present
        w.put(0, 1); // gain_control_data_present
        for b in 0..self.max_sfb {
            let book = c.cb[b];
            if book != 0 {
                let (s, e) = (usize::from(SWB_48[b]), usize::from(SWB_48[b + 1]));
                write_spectral(w, book, &c.q[s..e]);
            }
        }
    }
}

/// The threshold of hearing (Terhardt's approximation) per band, as noise power per
/// coefficient in the encoder's units, for full scale played at 96 dB SPL.
fn hearing(sample_rate: u32) -> Vec<f32> {
    // A full-scale sine puts about 1e14 per coefficient into its band.
    let full_scale = 1e14f64;
    (0..SWB_48.len() - 1)
        .map(|b| {
            let centre = f64::from(SWB_48[b] + SWB_48[b + 1]) / 2.0;
            let khz = (centre * f64::from(sample_rate) / (2.0 * FRAME as f64) / 1000.0).max(0.02);
            let db = 3.64 * khz.powf(-0.8) - 6.5 * (-0.6 * (khz - 3.3).powi(2)).exp()
                + 1e-3 * khz.powi(4);
            (full_scale * 10f64.powf((db.min(96.0) - 96.0) / 10.0)) as f32
        })
        .collect()
}

/// Codeword index and sign bits of one tuple in a codebook.
fn codeword(book: u8, t: &[i32]) -> usize {
    match book {
        1 | 2 => t.iter().fold(0, |i, v| i * 3 + (v + 1) as usize),
        3 | 4 => t.iter().fold(0, |i, v| i * 3 + v.unsigned_abs() as usize),
        5 | 6 => t.iter().fold(0, |i, v| i * 9 + (v + 4) as usize),
        7 | 8 => t.iter().fold(0, |i, v| i * 8 + v.unsigned_abs() as usize),
        9 | 10 => t.iter().fold(0, |i, v| i * 13 + v.unsigned_abs() as usize),
        _ => t
            .iter()
            .fold(0, |i, v| i * 17 + v.unsigned_abs().min(16) as usize),
    }
}

fn unsigned(book: u8) -> bool {
    !matches!(book, 1 | 2 | 5 | 6)
}

fn tuple(book: u8) -> usize {
    if book <= 4 {
        4
    } else {
        2
    }
}

/// Bits of an escape sequence for a magnitude ≥ 16.
fn escape_bits(v: u32) -> usize {
    let n = 31 - v.leading_zeros() as usize; // floor(log2 v) ≥ 4
    (n - 4) + 1 + n
}

fn spectral_bits(book: u8, q: &[i32]) -> usize {
    let table = tables::SPECTRUM[usize::from(book) - 1];
    let mut bits = 0;
    for t in q.chunks(tuple(book)) {
        bits += usize::from(table[codeword(book, t)].1);
        if unsigned(book) {
            for v in t {
                if *v != 0 {
                    bits += 1;
                }
                if book == 11 && v.unsigned_abs() >= 16 {
                    bits += escape_bits(v.unsigned_abs());
                }
            }
        }
    }
    bits
}

fn write_spectral(w: &mut BitWriter, book: u8, q: &[i32]) {
    let table = tables::SPECTRUM[usize::from(book) - 1];
    for t in q.chunks(tuple(book)) {
        let (code, len) = table[codeword(book, t)];
        w.put(code, len);
        if unsigned(book) {
            for v in t {
                if *v != 0 {
                    w.put(u32::from(*v < 0), 1);
                }
            }
            if book == 11 {
                for v in t {
                    let m = v.unsigned_abs();
                    if m >= 16 {
                        let n = 31 - m.leading_zeros();
                        for _ in 0..n - 4 {
                            w.put(1, 1);
                        }
                        w.put(0, 1);
                        w.put(m - (1 << n), n as u8);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each codebook is a complete prefix code (Kraft sum 1, no codeword a prefix of another).
    #[test]
    fn codebooks_are_complete_prefix_codes() {
        let mut books: Vec<&[(u32, u8)]> = tables::SPECTRUM.to_vec();
        books.push(&tables::SCALEFACTOR);
        for (i, book) in books.iter().enumerate() {
            let kraft: f64 = book.iter().map(|(_, l)| 0.5f64.powi(i32::from(*l))).sum();
            assert!((kraft - 1.0).abs() < 1e-9, "book {i}: Kraft sum {kraft}");
            for (a, (ca, la)) in book.iter().enumerate() {
                assert!(u64::from(*ca) < (1u64 << la), "book {i}: code {a} too long");
                for (b, (cb, lb)) in book.iter().enumerate() {
                    if a != b && la <= lb {
                        assert_ne!(cb >> (lb - la), *ca, "book {i}: {a} prefixes {b}");
                    }
                }
            }
        }
    }

    /// A tone through our encoder and symphonia's decoder comes back at its level and
    /// frequency, one frame late, with the noise the rate allows.
    #[test]
    fn symphonia_decodes_a_tone() {
        use symphonia_core::audio::SampleBuffer;
        use symphonia_core::codecs::{CodecParameters, Decoder as _, DecoderOptions};
        let mut e = Encoder::new(48_000, 2, 128_000).unwrap();
        let mut params = CodecParameters::new();
        params
            .for_codec(symphonia_core::codecs::CODEC_TYPE_AAC)
            .with_extra_data(e.audio_specific_config().into_boxed_slice());
        let mut d =
            symphonia_codec_aac::AacDecoder::try_new(&params, &DecoderOptions::default()).unwrap();
        let tone =
            |i: usize| 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 48_000.0).sin();
        let mut out = Vec::new();
        for f in 0..60 {
            let l: Vec<f32> = (0..FRAME).map(|i| tone(f * FRAME + i)).collect();
            let r: Vec<f32> = l.iter().map(|v| v * 0.5).collect();
            let data = e.encode(&[&l, &r]);
            let packet = symphonia_core::formats::Packet::new_from_slice(0, 0, 1024, &data);
            let buf = d.decode(&packet).unwrap();
            let mut sb = SampleBuffer::<f32>::new(buf.capacity() as u64, *buf.spec());
            sb.copy_interleaved_ref(buf);
            out.extend_from_slice(sb.samples());
        }
        // Decoded sample i (per channel) is input sample i − FRAME; compare after the start.
        let (mut sig, mut err, mut sig_r, mut err_r) = (0f64, 0f64, 0f64, 0f64);
        for i in 4 * FRAME..59 * FRAME {
            let want = f64::from(tone(i - FRAME));
            let (l, r) = (f64::from(out[2 * i]), f64::from(out[2 * i + 1]));
            sig += want * want;
            err += (l - want).powi(2);
            sig_r += (want / 2.0).powi(2);
            err_r += (r - want / 2.0).powi(2);
        }
        let snr = 10.0 * (sig / err).log10();
        let snr_r = 10.0 * (sig_r / err_r).log10();
        eprintln!("tone through the encoder and symphonia: SNR {snr:.1} dB / {snr_r:.1} dB");
        assert!(
            snr > 40.0 && snr_r > 40.0,
            "SNR {snr:.1} dB / {snr_r:.1} dB"
        );
    }

    #[test]
    fn config_is_aac_lc() {
        let e = Encoder::new(48_000, 2, 128_000).unwrap();
        assert_eq!(e.audio_specific_config(), vec![0x11, 0x90]);
        let e = Encoder::new(44_100, 1, 64_000).unwrap();
        assert_eq!(e.audio_specific_config(), vec![0x12, 0x08]);
        assert!(Encoder::new(32_000, 2, 128_000).is_err());
        assert!(Encoder::new(48_000, 6, 128_000).is_err());
    }

    #[test]
    fn silence_and_noise_encode_within_the_rate() {
        let mut e = Encoder::new(48_000, 2, 128_000).unwrap();
        let silence = vec![0f32; FRAME];
        let f = e.encode(&[&silence, &silence]);
        assert!(
            !f.is_empty() && f.len() < 64,
            "{} bytes of silence",
            f.len()
        );
        let mut seed = 1u32;
        let mut total = 0;
        for _ in 0..50 {
            let noise: Vec<f32> = (0..FRAME)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            let f = e.encode(&[&noise, &noise]);
            assert!(f.len() * 8 <= MAX_BITS_PER_CHANNEL * 2);
            total += f.len() * 8;
        }
        let rate = total as f64 / 50.0 * 48_000.0 / FRAME as f64;
        assert!(
            (100_000.0..=140_000.0).contains(&rate),
            "white noise at {rate:.0} bit/s"
        );
    }
}
