//! The offline picture in H.265 (Main profile), coded by hand like the H.264 one.
//!
//! H.265 has only CABAC, so this module carries a CABAC encoder (ITU-T H.265 §9.3.4, the
//! encoder side as H.264 §9.3.4 draws it) and codes the few syntax elements the picture needs.
//! Every coding tree block is one 16×16 coding unit (so no split flags are coded):
//! - flat black units are intra DC-predicted with no residual: `part_mode` 2N×2N, the DC mode as
//!   the second most probable mode, chroma derived, the transform split once so that
//!   `cbf_luma` can be coded 0 (at depth 0 an intra unit without chroma residual has an
//!   implied luma residual);
//! - the others, and the first one (nothing to predict from), are PCM: their samples as they
//!   are, 8 bits each;
//! - later pictures of the GOP are one P slice of skipped units (one merge candidate: zero
//!   motion from the previous picture).
//!
//! Deblocking, SAO and temporal motion vector prediction are off, so every picture is exactly
//! the drawn one.

use super::{nal_with, picture, BLACK, GREY};
use crate::bits::BitWriter;

/// The coding tree block and coding unit: 16×16.
const CTB: usize = 16;
/// `log2_max_pic_order_cnt_lsb`: picture order counts wrap at 256 (a GOP is shorter).
const LOG2_MAX_POC_LSB: u8 = 8;
/// The slice QP (no residual is coded: it only seeds the contexts).
const QP: i32 = 26;

const VPS_NUT: u8 = 32;
const SPS_NUT: u8 = 33;
const PPS_NUT: u8 = 34;
const IDR_W_RADL: u8 = 19;
const TRAIL_R: u8 = 1;

/// The offline picture as H.265 NAL units (no start codes, no length prefixes).
pub struct OfflineH265 {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub vps: Vec<u8>,
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    idr: Vec<u8>,
    /// Coding tree blocks across and down.
    ctbs: (usize, usize),
}

impl OfflineH265 {
    /// A `width`×`height` picture (multiples of 16, at least 64×32) at `fps` frames a second.
    pub fn new(width: u32, height: u32, fps: u32) -> OfflineH265 {
        let width = (width.clamp(64, 4096) / 16) * 16;
        let height = (height.clamp(32, 2304) / 16) * 16;
        let fps = fps.clamp(1, 120);
        let level = match width * height {
            0..=983_040 => 93,          // 3.1
            983_041..=2_228_224 => 120, // 4
            _ => 153,                   // 5.1
        };
        let ctbs = (width as usize / CTB, height as usize / CTB);
        let luma = picture(width as usize, height as usize);
        OfflineH265 {
            width,
            height,
            fps,
            vps: nal(VPS_NUT, &vps_rbsp(level)),
            sps: nal(SPS_NUT, &sps_rbsp(width, height, fps, level)),
            pps: nal(PPS_NUT, &pps_rbsp()),
            idr: nal(IDR_W_RADL, &idr_rbsp(&luma, ctbs)),
            ctbs,
        }
    }

    /// The IDR picture.
    pub fn idr(&self) -> &[u8] {
        &self.idr
    }

    /// A P picture that repeats the last one (every coding unit skipped); `n` counts pictures
    /// since the IDR (1, 2, …).
    pub fn repeat(&self, n: u32) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.put(1, 1); // first_slice_segment_in_pic_flag
        w.ue(0); // slice_pic_parameter_set_id
        w.ue(1); // slice_type: P
        w.put(n % (1 << LOG2_MAX_POC_LSB), LOG2_MAX_POC_LSB); // slice_pic_order_cnt_lsb
        w.put(1, 1); // short_term_ref_pic_set_sps_flag: the SPS's only set (the last picture)
        w.put(0, 1); // num_ref_idx_active_override_flag
        w.ue(4); // five_minus_max_num_merge_cand: one candidate, no merge_idx
        w.se(0); // slice_qp_delta
        byte_alignment(&mut w);
        let mut c = Cabac::new(w);
        // cu_skip_flag, initType 1.
        let mut skip = [ctx(197), ctx(185), ctx(201)];
        let (cw, ch) = self.ctbs;
        for y in 0..ch {
            for x in 0..cw {
                // The context counts the skipped neighbours (left, above) that exist.
                let inc = usize::from(x > 0) + usize::from(y > 0);
                c.decision(&mut skip[inc], true);
                c.terminate(x + 1 == cw && y + 1 == ch); // end_of_slice_segment_flag
            }
        }
        let mut w = c.into_writer();
        w.align_zero();
        nal(TRAIL_R, &w.finish())
    }
}

fn nal(kind: u8, rbsp: &[u8]) -> Vec<u8> {
    // nuh_layer_id 0, nuh_temporal_id_plus1 1.
    nal_with(&[kind << 1, 1], rbsp)
}

fn profile_tier_level(w: &mut BitWriter, level: u32) {
    w.put(0, 2); // general_profile_space
    w.put(0, 1); // general_tier_flag: Main
    w.put(1, 5); // general_profile_idc: Main
    w.put(0x6000_0000, 32); // general_profile_compatibility_flag: Main and Main 10
    w.put(1, 1); // general_progressive_source_flag
    w.put(0, 1); // general_interlaced_source_flag
    w.put(0, 1); // general_non_packed_constraint_flag
    w.put(1, 1); // general_frame_only_constraint_flag
    w.put(0, 32); // 43 reserved bits and general_inbld_flag
    w.put(0, 12);
    w.put(level, 8); // general_level_idc
}

fn vps_rbsp(level: u32) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.put(0, 4); // vps_video_parameter_set_id
    w.put(1, 1); // vps_base_layer_internal_flag
    w.put(1, 1); // vps_base_layer_available_flag
    w.put(0, 6); // vps_max_layers_minus1
    w.put(0, 3); // vps_max_sub_layers_minus1
    w.put(1, 1); // vps_temporal_id_nesting_flag
    w.put(0xffff, 16); // vps_reserved_0xffff_16bits
    profile_tier_level(&mut w, level);
    w.put(1, 1); // vps_sub_layer_ordering_info_present_flag
    w.ue(1); // vps_max_dec_pic_buffering_minus1: the reference and the current picture
    w.ue(0); // vps_max_num_reorder_pics
    w.ue(0); // vps_max_latency_increase_plus1
    w.put(0, 6); // vps_max_layer_id
    w.ue(0); // vps_num_layer_sets_minus1
    w.put(0, 1); // vps_timing_info_present_flag
    w.put(0, 1); // vps_extension_flag
    w.trailing_bits();
    w.finish()
}

fn sps_rbsp(width: u32, height: u32, fps: u32, level: u32) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.put(0, 4); // sps_video_parameter_set_id
    w.put(0, 3); // sps_max_sub_layers_minus1
    w.put(1, 1); // sps_temporal_id_nesting_flag
    profile_tier_level(&mut w, level);
    w.ue(0); // sps_seq_parameter_set_id
    w.ue(1); // chroma_format_idc: 4:2:0
    w.ue(width); // pic_width_in_luma_samples
    w.ue(height); // pic_height_in_luma_samples
    w.put(0, 1); // conformance_window_flag
    w.ue(0); // bit_depth_luma_minus8
    w.ue(0); // bit_depth_chroma_minus8
    w.ue(u32::from(LOG2_MAX_POC_LSB) - 4);
    w.put(1, 1); // sps_sub_layer_ordering_info_present_flag
    w.ue(1); // sps_max_dec_pic_buffering_minus1
    w.ue(0); // sps_max_num_reorder_pics
    w.ue(0); // sps_max_latency_increase_plus1
    w.ue(1); // log2_min_luma_coding_block_size_minus3: 16
    w.ue(0); // log2_diff_max_min_luma_coding_block_size: the CTB is 16 too
    w.ue(0); // log2_min_luma_transform_block_size_minus2: 4
    w.ue(2); // log2_diff_max_min_luma_transform_block_size: 16
    w.ue(0); // max_transform_hierarchy_depth_inter
    w.ue(1); // max_transform_hierarchy_depth_intra
    w.put(0, 1); // scaling_list_enabled_flag
    w.put(0, 1); // amp_enabled_flag
    w.put(0, 1); // sample_adaptive_offset_enabled_flag
    w.put(1, 1); // pcm_enabled_flag
    w.put(7, 4); // pcm_sample_bit_depth_luma_minus1
    w.put(7, 4); // pcm_sample_bit_depth_chroma_minus1
    w.ue(1); // log2_min_pcm_luma_coding_block_size_minus3: 16
    w.ue(0); // log2_diff_max_min_pcm_luma_coding_block_size
    w.put(1, 1); // pcm_loop_filter_disabled_flag
    w.ue(1); // num_short_term_ref_pic_sets
    w.ue(1); // num_negative_pics
    w.ue(0); // num_positive_pics
    w.ue(0); // delta_poc_s0_minus1: the previous picture
    w.put(1, 1); // used_by_curr_pic_s0_flag
    w.put(0, 1); // long_term_ref_pics_present_flag
    w.put(0, 1); // sps_temporal_mvp_enabled_flag
    w.put(0, 1); // strong_intra_smoothing_enabled_flag
    w.put(1, 1); // vui_parameters_present_flag
    w.put(0, 1); // aspect_ratio_info_present_flag
    w.put(0, 1); // overscan_info_present_flag
    w.put(0, 1); // video_signal_type_present_flag
    w.put(0, 1); // chroma_loc_info_present_flag
    w.put(0, 1); // neutral_chroma_indication_flag
    w.put(0, 1); // field_seq_flag
    w.put(0, 1); // frame_field_info_present_flag
    w.put(0, 1); // default_display_window_flag
    w.put(1, 1); // vui_timing_info_present_flag
    w.put(1, 32); // vui_num_units_in_tick
    w.put(fps, 32); // vui_time_scale
    w.put(0, 1); // vui_poc_proportional_to_timing_flag
    w.put(0, 1); // vui_hrd_parameters_present_flag
    w.put(0, 1); // bitstream_restriction_flag
    w.put(0, 1); // sps_extension_present_flag
    w.trailing_bits();
    w.finish()
}

fn pps_rbsp() -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // pps_pic_parameter_set_id
    w.ue(0); // pps_seq_parameter_set_id
    w.put(0, 1); // dependent_slice_segments_enabled_flag
    w.put(0, 1); // output_flag_present_flag
    w.put(0, 3); // num_extra_slice_header_bits
    w.put(0, 1); // sign_data_hiding_enabled_flag
    w.put(0, 1); // cabac_init_present_flag
    w.ue(0); // num_ref_idx_l0_default_active_minus1
    w.ue(0); // num_ref_idx_l1_default_active_minus1
    w.se(QP - 26); // init_qp_minus26
    w.put(0, 1); // constrained_intra_pred_flag
    w.put(0, 1); // transform_skip_enabled_flag
    w.put(0, 1); // cu_qp_delta_enabled_flag
    w.se(0); // pps_cb_qp_offset
    w.se(0); // pps_cr_qp_offset
    w.put(0, 1); // pps_slice_chroma_qp_offsets_present_flag
    w.put(0, 1); // weighted_pred_flag
    w.put(0, 1); // weighted_bipred_flag
    w.put(0, 1); // transquant_bypass_enabled_flag
    w.put(0, 1); // tiles_enabled_flag
    w.put(0, 1); // entropy_coding_sync_enabled_flag
    w.put(0, 1); // pps_loop_filter_across_slices_enabled_flag
    w.put(1, 1); // deblocking_filter_control_present_flag
    w.put(0, 1); // deblocking_filter_override_enabled_flag
    w.put(1, 1); // pps_deblocking_filter_disabled_flag
    w.put(0, 1); // pps_scaling_list_data_present_flag
    w.put(0, 1); // lists_modification_present_flag
    w.ue(0); // log2_parallel_merge_level_minus2
    w.put(0, 1); // slice_segment_header_extension_present_flag
    w.put(0, 1); // pps_extension_present_flag
    w.trailing_bits();
    w.finish()
}

/// `byte_alignment()` after a slice segment header: a one, then zeros.
fn byte_alignment(w: &mut BitWriter) {
    w.put(1, 1);
    w.align_zero();
}

/// The IDR slice of `luma`, `ctbs` coding units across and down.
fn idr_rbsp(luma: &[u8], ctbs: (usize, usize)) -> Vec<u8> {
    let (cw, ch) = ctbs;
    let width = cw * CTB;
    let mut w = BitWriter::default();
    w.put(1, 1); // first_slice_segment_in_pic_flag
    w.put(0, 1); // no_output_of_prior_pics_flag
    w.ue(0); // slice_pic_parameter_set_id
    w.ue(2); // slice_type: I
    w.se(0); // slice_qp_delta
    byte_alignment(&mut w);
    let mut c = Cabac::new(w);
    // initType 0.
    let mut part_mode = ctx(184);
    let mut prev_intra_luma_pred = ctx(184);
    let mut intra_chroma_pred_mode = ctx(63);
    let mut split_transform = ctx(138); // 5 - log2TrafoSize(4)
    let mut cbf_luma = ctx(111); // trafoDepth 1
    let mut cbf_chroma = ctx(94); // trafoDepth 0, shared by Cb and Cr
    let sample = |x: usize, y: usize| luma[y * width + x];
    for cy in 0..ch {
        for cx in 0..cw {
            let (x0, y0) = (cx * CTB, cy * CTB);
            if predicts_black(luma, width, x0, y0) {
                c.decision(&mut part_mode, true); // PART_2Nx2N
                c.terminate(false); // pcm_flag
                c.decision(&mut prev_intra_luma_pred, true);
                // mpm_idx 1: the neighbours are DC (or absent), so the candidates are
                // planar, DC, vertical.
                c.bypass(true);
                c.bypass(false);
                c.decision(&mut intra_chroma_pred_mode, false); // 4: as luma
                c.decision(&mut split_transform, true);
                c.decision(&mut cbf_chroma, false); // cbf_cb
                c.decision(&mut cbf_chroma, false); // cbf_cr
                for _ in 0..4 {
                    c.decision(&mut cbf_luma, false);
                }
            } else {
                c.decision(&mut part_mode, true);
                c.terminate(true); // pcm_flag, then the engine is flushed
                let mut w = c.into_writer();
                w.align_zero(); // pcm_alignment_zero_bit
                for y in y0..y0 + CTB {
                    for x in x0..x0 + CTB {
                        w.put(u32::from(sample(x, y)), 8);
                    }
                }
                for _ in 0..2 * (CTB / 2) * (CTB / 2) {
                    w.put(u32::from(GREY), 8);
                }
                c = Cabac::new(w);
            }
            c.terminate(cx + 1 == cw && cy + 1 == ch); // end_of_slice_segment_flag
        }
    }
    // The flush's last bit is the rbsp_stop_one_bit.
    let mut w = c.into_writer();
    w.align_zero();
    w.finish()
}

/// Whether the unit at (`x0`, `y0`) is black and intra DC prediction gives exactly that: every
/// neighbouring sample the decoder may use (the row above from one left to the above-right
/// unit's end, the column to the left) is black, and there is at least one.
fn predicts_black(luma: &[u8], width: usize, x0: usize, y0: usize) -> bool {
    if x0 == 0 && y0 == 0 {
        return false;
    }
    let at = |x: usize, y: usize| luma[y * width + x];
    let inside = (y0..y0 + CTB).all(|y| (x0..x0 + CTB).all(|x| at(x, y) == BLACK));
    let above = y0 == 0
        || (x0.saturating_sub(1)..(x0 + 2 * CTB).min(width)).all(|x| at(x, y0 - 1) == BLACK);
    let left = x0 == 0 || (y0.saturating_sub(1)..y0 + CTB).all(|y| at(x0 - 1, y) == BLACK);
    inside && above && left
}

/// A context variable: the probability state and the most probable symbol.
#[derive(Clone, Copy)]
struct Ctx {
    state: u8,
    mps: bool,
}

/// A context initialised from its `initValue` at the slice QP (§9.3.2.2).
fn ctx(init_value: u8) -> Ctx {
    let slope = i32::from(init_value >> 4);
    let offset = i32::from(init_value & 15);
    let m = slope * 5 - 45;
    let n = (offset << 3) - 16;
    let pre = (((m * QP.clamp(0, 51)) >> 4) + n).clamp(1, 126);
    if pre <= 63 {
        Ctx {
            state: (63 - pre) as u8,
            mps: false,
        }
    } else {
        Ctx {
            state: (pre - 64) as u8,
            mps: true,
        }
    }
}

/// The arithmetic encoder.
struct Cabac {
    w: BitWriter,
    low: u32,
    range: u32,
    outstanding: u32,
    first: bool,
}

impl Cabac {
    fn new(w: BitWriter) -> Cabac {
        Cabac {
            w,
            low: 0,
            range: 510,
            outstanding: 0,
            first: true,
        }
    }

    fn put_bit(&mut self, b: bool) {
        if self.first {
            self.first = false;
        } else {
            self.w.put(u32::from(b), 1);
        }
        while self.outstanding > 0 {
            self.w.put(u32::from(!b), 1);
            self.outstanding -= 1;
        }
    }

    fn renorm(&mut self) {
        while self.range < 256 {
            if self.low < 256 {
                self.put_bit(false);
            } else if self.low >= 512 {
                self.low -= 512;
                self.put_bit(true);
            } else {
                self.low -= 256;
                self.outstanding += 1;
            }
            self.range <<= 1;
            self.low <<= 1;
        }
    }

    fn decision(&mut self, c: &mut Ctx, bin: bool) {
        let lps = u32::from(RANGE_LPS[usize::from(c.state)][((self.range >> 6) & 3) as usize]);
        self.range -= lps;
        if bin == c.mps {
            c.state = (c.state + 1).min(62);
        } else {
            self.low += self.range;
            self.range = lps;
            if c.state == 0 {
                c.mps = !c.mps;
            }
            c.state = TRANS_LPS[usize::from(c.state)];
        }
        self.renorm();
    }

    fn bypass(&mut self, bin: bool) {
        self.low <<= 1;
        if bin {
            self.low += self.range;
        }
        if self.low >= 1024 {
            self.put_bit(true);
            self.low -= 1024;
        } else if self.low < 512 {
            self.put_bit(false);
        } else {
            self.low -= 512;
            self.outstanding += 1;
        }
    }

    /// A bin before termination; a one flushes the engine (its last bit written is a one).
    fn terminate(&mut self, bin: bool) {
        self.range -= 2;
        if bin {
            self.low += self.range;
            self.range = 2;
            self.renorm();
            self.put_bit((self.low >> 9) & 1 == 1);
            self.w.put(((self.low >> 7) & 3) | 1, 2);
        } else {
            self.renorm();
        }
    }

    fn into_writer(self) -> BitWriter {
        self.w
    }
}

/// `rangeTabLps[pStateIdx][qRangeIdx]` (H.265 Table 9-52).
const RANGE_LPS: [[u8; 4]; 64] = [
    [128, 176, 208, 240],
    [128, 167, 197, 227],
    [128, 158, 187, 216],
    [123, 150, 178, 205],
    [116, 142, 169, 195],
    [111, 135, 160, 185],
    [105, 128, 152, 175],
    [100, 122, 144, 166],
    [95, 116, 137, 158],
    [90, 110, 130, 150],
    [85, 104, 123, 142],
    [81, 99, 117, 135],
    [77, 94, 111, 128],
    [73, 89, 105, 122],
    [69, 85, 100, 116],
    [66, 80, 95, 110],
    [62, 76, 90, 104],
    [59, 72, 86, 99],
    [56, 69, 81, 94],
    [53, 65, 77, 89],
    [51, 62, 73, 85],
    [48, 59, 69, 80],
    [46, 56, 66, 76],
    [43, 53, 63, 72],
    [41, 50, 59, 69],
    [39, 48, 56, 65],
    [37, 45, 54, 62],
    [35, 43, 51, 59],
    [33, 41, 48, 56],
    [32, 39, 46, 53],
    [30, 37, 43, 50],
    [29, 35, 41, 48],
    [27, 33, 39, 45],
    [26, 31, 37, 43],
    [24, 30, 35, 41],
    [23, 28, 33, 39],
    [22, 27, 32, 37],
    [21, 26, 30, 35],
    [20, 24, 29, 33],
    [19, 23, 27, 31],
    [18, 22, 26, 30],
    [17, 21, 25, 28],
    [16, 20, 23, 27],
    [15, 19, 22, 25],
    [14, 18, 21, 24],
    [14, 17, 20, 23],
    [13, 16, 19, 22],
    [12, 15, 18, 21],
    [12, 14, 17, 20],
    [11, 14, 16, 19],
    [11, 13, 15, 18],
    [10, 12, 15, 17],
    [10, 12, 14, 16],
    [9, 11, 13, 15],
    [9, 11, 12, 14],
    [8, 10, 12, 14],
    [8, 9, 11, 13],
    [7, 9, 11, 12],
    [7, 9, 10, 12],
    [7, 8, 10, 11],
    [6, 8, 9, 11],
    [6, 7, 9, 10],
    [6, 7, 8, 9],
    [2, 2, 2, 2],
];

/// `transIdxLps[pStateIdx]` (H.265 Table 9-53).
const TRANS_LPS: [u8; 64] = [
    0, 0, 1, 2, 2, 4, 4, 5, 6, 7, 8, 9, 9, 11, 11, 12, 13, 13, 15, 15, 16, 16, 18, 18, 19, 19, 21,
    21, 22, 22, 23, 24, 24, 25, 26, 26, 27, 27, 28, 29, 29, 30, 30, 30, 31, 32, 32, 33, 33, 33, 34,
    34, 35, 35, 35, 36, 36, 36, 37, 37, 37, 38, 38, 63,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_read_back_and_the_pictures_are_small() {
        let h = OfflineH265::new(1280, 720, 25);
        let sps = crate::h265::parse_sps(&h.sps).unwrap();
        assert_eq!((sps.width, sps.height), (1280, 720));
        assert!(crate::h265::is_irap(crate::h265::nal_type(h.idr())));
        assert!(h.idr().len() < 64 * 1024, "{}", h.idr().len());
        // 3600 skipped units, a few bits each.
        assert!(h.repeat(1).len() < 400, "{}", h.repeat(1).len());
        assert_ne!(h.repeat(1), h.repeat(2));
    }

    #[test]
    fn contexts_start_where_the_standard_says() {
        // initValue 154 is the equiprobable state at any QP.
        let c = ctx(154);
        assert_eq!((c.state, c.mps), (0, true));
        let c = ctx(63);
        assert!(!c.mps);
    }
}
