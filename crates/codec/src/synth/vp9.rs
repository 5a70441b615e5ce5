//! The offline picture in VP9 (profile 0): black, coded by hand.
//!
//! VP9 has no PCM mode and an intra block with no neighbours predicts grey (128), so the key
//! frame codes one coefficient: the first 64×64 block's first 32×32 luma transform block gets
//! a DC coefficient that takes it from 128 to 16 (video-range black). Every other block is
//! DC-predicted with no residual (`skip`), so black spreads from that one block to the whole
//! picture; chroma stays at its predicted 128. The loop filter is off. Only the default
//! probabilities of the few symbols coded are needed (libvpx's tables, which the VP9 bitstream
//! specification fixes): the key-frame partition, skip, intra-mode and coefficient
//! probabilities, and one row of the Pareto table for the coefficient's category.
//!
//! The other pictures of a GOP are `show_existing_frame` headers (one byte) that show the key
//! frame again.

use crate::bits::BitWriter;

/// The quantizer index: its DC step (1098) makes the coefficient [`DC_VALUE`] a drop of
/// exactly 112 after the 32×32 inverse DCT (`(26·1098)>>1`, twice ×11585/2¹⁴, then /64).
const BASE_Q_IDX: u32 = 250;
/// The DC coefficient's magnitude (negative): a CAT4 token (19–34), 7 in its 4 extra bits.
const DC_VALUE: u32 = 26;

/// Default probabilities (libvpx `vp9_entropy.c`, `vp9_entropymode.c`).
/// `coef_probs[TX_32X32][Y][intra][band 0][ctx]`.
const Y32_BAND0: [[u8; 3]; 3] = [[17, 38, 140], [7, 34, 80], [1, 17, 29]];
/// `coef_probs[TX_32X32][Y][intra][band 1][ctx 5]`: after a CAT token (token cache 5) on both
/// neighbours of the second scan position, the context is (1 + 5 + 5) / 2 = 5.
const Y32_BAND1_CTX5: [u8; 3] = [1, 10, 16];
/// `coef_probs[TX_32X32][UV][intra][band 0][ctx 0]`.
const UV32_BAND0_CTX0: [u8; 3] = [181, 21, 201];
/// `vp9_pareto8_full[140 - 1]`: the model for the nodes past ONE when the ONE node's
/// probability is 140.
const PARETO_140: [u8; 8] = [221, 152, 175, 242, 180, 255, 240, 253];
const CAT4_PROBS: [u8; 4] = [176, 155, 140, 135];
/// `vp9_kf_partition_probs`: by block size (8×8, 16×16, 32×32, 64×64), then left·2 + above.
const KF_PARTITION: [[[u8; 3]; 4]; 4] = [
    [[158, 97, 94], [93, 24, 99], [85, 119, 44], [62, 59, 67]],
    [[149, 53, 53], [94, 20, 48], [83, 53, 24], [52, 18, 18]],
    [[150, 40, 39], [78, 12, 26], [67, 33, 11], [24, 7, 5]],
    [[174, 35, 49], [68, 11, 27], [57, 15, 9], [12, 3, 3]],
];
const SKIP_PROBS: [u8; 3] = [192, 128, 64];
/// `vp9_kf_y_mode_prob[DC][DC][0]` and `vp9_kf_uv_mode_prob[DC][0]`: DC_PRED is the tree's
/// first leaf.
const KF_Y_DC: u8 = 137;
const KF_UV_DC: u8 = 144;
/// The probability of "no update" flags in the compressed header.
const DIFF_UPDATE_PROB: u8 = 252;

/// The offline picture as VP9 frames.
pub struct OfflineVp9 {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    key: Vec<u8>,
}

impl OfflineVp9 {
    /// A `width`×`height` picture (multiples of 16, at least 64×32) at `fps` frames a second.
    pub fn new(width: u32, height: u32, fps: u32) -> OfflineVp9 {
        let width = (width.clamp(64, 4096) / 16) * 16;
        let height = (height.clamp(32, 2304) / 16) * 16;
        OfflineVp9 {
            width,
            height,
            fps: fps.clamp(1, 120),
            key: key_frame(width, height),
        }
    }

    /// The key frame.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// A frame that shows the key frame again: frame marker, profile 0, `show_existing_frame`
    /// of reference slot 0 (a key frame refreshes every slot).
    pub fn repeat(&self) -> &'static [u8] {
        &[0b1000_1000]
    }
}

/// The key frame: uncompressed header, compressed header, one tile.
fn key_frame(width: u32, height: u32) -> Vec<u8> {
    let compressed = compressed_header();
    let tile = tile(width, height);
    let mut w = BitWriter::default();
    w.put(2, 2); // frame_marker
    w.put(0, 1); // profile_low_bit
    w.put(0, 1); // profile_high_bit
    w.put(0, 1); // show_existing_frame
    w.put(0, 1); // frame_type: KEY_FRAME
    w.put(1, 1); // show_frame
    w.put(0, 1); // error_resilient_mode
    w.put(0x49_83_42, 24); // frame_sync_code
    w.put(1, 3); // color_space: BT.601
    w.put(0, 1); // color_range: studio (video range)
    w.put(width - 1, 16);
    w.put(height - 1, 16);
    w.put(0, 1); // render_and_frame_size_different
    w.put(0, 1); // refresh_frame_context
    w.put(1, 1); // frame_parallel_decoding_mode
    w.put(0, 2); // frame_context_idx
    w.put(0, 6); // loop_filter_level: off
    w.put(0, 3); // loop_filter_sharpness
    w.put(0, 1); // loop_filter_delta_enabled
    w.put(BASE_Q_IDX, 8);
    w.put(0, 1); // delta_q_y_dc
    w.put(0, 1); // delta_q_uv_dc
    w.put(0, 1); // delta_q_uv_ac
    w.put(0, 1); // segmentation_enabled
                 // One tile: as few tile columns as the width allows (no increment), one tile row.
    let sb_cols = width.div_ceil(64);
    let mut min_log2 = 0;
    while (64 << min_log2) < sb_cols {
        min_log2 += 1;
    }
    let mut max_log2 = 1;
    while (sb_cols >> max_log2) >= 4 {
        max_log2 += 1;
    }
    if max_log2 - 1 > min_log2 {
        w.put(0, 1); // increment_tile_cols_log2
    }
    w.put(0, 1); // tile_rows_log2
    w.put(compressed.len() as u32, 16); // header_size_in_bytes
    let mut out = w.finish(); // trailing bits: zeros to the byte
    out.extend_from_slice(&compressed);
    out.extend_from_slice(&tile);
    out
}

/// The compressed header: `ALLOW_32X32`, no probability updates.
fn compressed_header() -> Vec<u8> {
    let mut b = BoolWriter::new();
    b.literal(3, 2); // tx_mode: ALLOW_32X32 …
    b.literal(0, 1); // … not TX_MODE_SELECT
    for _ in 0..4 {
        b.literal(0, 1); // update_coef_probs for 4×4 … 32×32
    }
    for _ in 0..3 {
        b.write(false, DIFF_UPDATE_PROB); // skip probabilities
    }
    b.finish()
}

/// The tile: 64×64 blocks in raster order, all intra DC; the first carries the coefficient.
fn tile(width: u32, height: u32) -> Vec<u8> {
    let (mi_cols, mi_rows) = (width.div_ceil(8) as usize, height.div_ceil(8) as usize);
    let mut t = Tile {
        b: BoolWriter::new(),
        mi_cols,
        mi_rows,
        above_partition: vec![0; mi_cols + 8],
        left_partition: [0; 8],
        above_skip: vec![None; mi_cols + 8],
        left_skip: [None; 8],
        first: true,
    };
    for r in (0..mi_rows).step_by(8) {
        t.left_partition = [0; 8];
        t.left_skip = [None; 8];
        for c in (0..mi_cols).step_by(8) {
            t.partition(r, c, 3);
        }
    }
    t.b.finish()
}

struct Tile {
    b: BoolWriter,
    mi_cols: usize,
    mi_rows: usize,
    /// Partition contexts (libvpx's `above_seg_context`/`left_seg_context`) in 8×8 units.
    above_partition: Vec<u8>,
    left_partition: [u8; 8],
    /// The skip flag of the block above / to the left of each 8×8 unit (None: no block).
    above_skip: Vec<Option<bool>>,
    left_skip: [Option<bool>; 8],
    /// The next block is the first (the one with the coefficient).
    first: bool,
}

impl Tile {
    /// A square block of 2^`bsl` 8×8 units at (`r`, `c`): whole blocks where they fit,
    /// halves at the frame's bottom/right edge, split where neither fits.
    fn partition(&mut self, r: usize, c: usize, bsl: u32) {
        if r >= self.mi_rows || c >= self.mi_cols {
            return;
        }
        let n = 1usize << bsl;
        let half = n / 2;
        let has_rows = r + half < self.mi_rows;
        let has_cols = c + half < self.mi_cols;
        let above = (self.above_partition[c] >> bsl) & 1;
        let left = (self.left_partition[r & 7] >> bsl) & 1;
        let probs = KF_PARTITION[bsl as usize][usize::from(left * 2 + above)];
        // (width, height) in 8×8 units, and the partition context values of that size.
        let (w, h, ctx_above, ctx_left) = if has_rows && has_cols {
            self.b.write(false, probs[0]); // PARTITION_NONE
            (n, n, 15u8 << (bsl + 1) & 15, 15u8 << (bsl + 1) & 15)
        } else if has_cols {
            self.b.write(false, probs[1]); // PARTITION_HORZ (the lower half is outside)
            (n, half, 15u8 << (bsl + 1) & 15, 15u8 << bsl & 15)
        } else if has_rows {
            self.b.write(false, probs[2]); // PARTITION_VERT
            (half, n, 15u8 << bsl & 15, 15u8 << (bsl + 1) & 15)
        } else {
            // PARTITION_SPLIT, implied (read nothing). An 8×8 block always fits.
            for (dr, dc) in [(0, 0), (0, half), (half, 0), (half, half)] {
                self.partition(r + dr, c + dc, bsl - 1);
            }
            return;
        };
        self.block(r, c, w, h);
        for x in c..c + n {
            self.above_partition[x] = ctx_above;
        }
        for y in r..r + n {
            self.left_partition[y & 7] = ctx_left;
        }
    }

    /// One intra block of `w`×`h` 8×8 units: skip (except the first), DC_PRED for luma and
    /// chroma, the largest transform (no `tx_size` is coded).
    fn block(&mut self, r: usize, c: usize, w: usize, h: usize) {
        let skip = !self.first;
        let ctx = usize::from(self.above_skip[c] == Some(true))
            + usize::from(self.left_skip[r & 7] == Some(true));
        self.b.write(skip, SKIP_PROBS[ctx]);
        self.b.write(false, KF_Y_DC); // intra_frame_mode: DC_PRED
        self.b.write(false, KF_UV_DC); // uv_mode: DC_PRED
        if !skip {
            self.first = false;
            self.coefficients();
        }
        for x in c..c + w {
            self.above_skip[x] = Some(skip);
        }
        for y in r..r + h {
            self.left_skip[y & 7] = Some(skip);
        }
    }

    /// The first block's tokens (64×64, 32×32 transforms), in decoding order: luma transform
    /// blocks top-left (the DC coefficient, then end of block), top-right and bottom-left
    /// (their context is 1: one neighbour has coefficients), bottom-right (context 0); then
    /// the U and V blocks (end of block at once).
    fn coefficients(&mut self) {
        let b = &mut self.b;
        // more_coefs, not ZERO, not ONE, past FOUR, past CAT2, not CAT5+, CAT4.
        b.write(true, Y32_BAND0[0][0]);
        b.write(true, Y32_BAND0[0][1]);
        b.write(true, Y32_BAND0[0][2]);
        b.write(true, PARETO_140[0]);
        b.write(true, PARETO_140[3]);
        b.write(false, PARETO_140[5]);
        b.write(true, PARETO_140[6]);
        let extra = DC_VALUE - 19;
        for (i, p) in CAT4_PROBS.iter().enumerate() {
            b.write((extra >> (3 - i)) & 1 == 1, *p);
        }
        b.write(true, 128); // sign: negative
        b.write(false, Y32_BAND1_CTX5[0]); // end of block
        b.write(false, Y32_BAND0[1][0]); // top-right: end of block
        b.write(false, Y32_BAND0[1][0]); // bottom-left
        b.write(false, Y32_BAND0[0][0]); // bottom-right
        b.write(false, UV32_BAND0_CTX0[0]); // U
        b.write(false, UV32_BAND0_CTX0[0]); // V
    }
}

/// The boolean encoder of VP8/VP9 (the inverse of the specification's `read_bool`).
struct BoolWriter {
    out: Vec<u8>,
    low: u32,
    range: u32,
    /// Bits to shift in before the next byte is complete, minus 24.
    count: i32,
}

impl BoolWriter {
    /// A new partition, its first bit the zero marker the decoder checks.
    fn new() -> BoolWriter {
        let mut b = BoolWriter {
            out: Vec::new(),
            low: 0,
            range: 255,
            count: -24,
        };
        b.write(false, 128);
        b
    }

    /// `bit` whose probability of being 0 is `prob`/256.
    fn write(&mut self, bit: bool, prob: u8) {
        let split = 1 + (((self.range - 1) * u32::from(prob)) >> 8);
        let mut low = self.low;
        let mut range = if bit {
            low += split;
            self.range - split
        } else {
            split
        };
        let mut shift = (range as u8).leading_zeros() as i32;
        range <<= shift;
        let mut count = self.count + shift;
        if count >= 0 {
            let offset = shift - count;
            if (low << (offset - 1)) & 0x8000_0000 != 0 {
                // Carry into the bytes already written.
                for byte in self.out.iter_mut().rev() {
                    if *byte == 0xff {
                        *byte = 0;
                    } else {
                        *byte += 1;
                        break;
                    }
                }
            }
            self.out.push((low >> (24 - offset)) as u8);
            low = (low << offset) & 0xff_ffff;
            shift = count;
            count -= 8;
        }
        self.low = low << shift;
        self.count = count;
        self.range = range;
    }

    /// `v`'s low `bits` bits, most significant first, each at probability one half.
    fn literal(&mut self, v: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.write((v >> i) & 1 == 1, 128);
        }
    }

    /// Flushes (32 zero bits, as libvpx), avoiding a last byte that looks like a superframe
    /// index marker.
    fn finish(mut self) -> Vec<u8> {
        for _ in 0..32 {
            self.write(false, 128);
        }
        if self.out.last().is_some_and(|b| b & 0xe0 == 0xc0) {
            self.out.push(0);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_frame_parses_and_is_small() {
        let v = OfflineVp9::new(1280, 720, 25);
        let info = crate::vp9::parse_keyframe(v.key()).unwrap().unwrap();
        assert_eq!((info.width, info.height), (1280, 720));
        assert!(v.key().len() < 1024, "{}", v.key().len());
        assert!(crate::vp9::parse_keyframe(v.repeat()).unwrap().is_none());
    }

    #[test]
    fn the_dc_coefficient_makes_black() {
        // What the decoder does with it (32×32: dequantised then halved; the DC-only inverse
        // transform; added to the prediction of 128).
        let dq = (DC_VALUE * 1098) >> 1;
        let round = |x: i64| (x + (1 << 13)) >> 14;
        let out = round(round(-i64::from(dq) * 11585) * 11585);
        assert_eq!(128 + ((out + 32) >> 6), 16);
    }
}
