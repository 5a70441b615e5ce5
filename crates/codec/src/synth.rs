//! Generated media: the offline stream of `alwaysAvailable` paths, made without an encoder.
//!
//! The H.264 picture (and the H.265 one, in [`hevc`]) is black with "STREAM IS OFFLINE" written across it, coded by hand in the
//! Constrained Baseline profile: macroblocks that are flat black are `I_16x16` with DC
//! prediction and no residual (a few bits each), the others `I_PCM` (their samples as they
//! are); every later picture of the GOP is one P slice of skipped macroblocks. Audio is
//! silence: AAC-LC frames with no spectral data, a silent Opus packet, G.711 and LPCM silence.

use crate::bits::{escape_rbsp, BitWriter};

pub mod av1;
pub mod hevc;
pub mod vp9;

/// Luma of black and of the text (video range), and the neutral chroma.
const BLACK: u8 = 16;
const WHITE: u8 = 235;
const GREY: u8 = 128;

/// The message, in a 5×7 font of its own letters.
const MESSAGE: &str = "STREAM IS OFFLINE";

fn glyph(c: char) -> [&'static str; 7] {
    match c {
        'S' => [
            " ### ", "#   #", "#    ", " ### ", "    #", "#   #", " ### ",
        ],
        'T' => [
            "#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ",
        ],
        'R' => [
            "#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #",
        ],
        'E' => [
            "#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####",
        ],
        'A' => [
            " ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
        'M' => [
            "#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #",
        ],
        'I' => [
            " ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        'O' => [
            " ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ",
        ],
        'F' => [
            "#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    ",
        ],
        'L' => [
            "#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####",
        ],
        'N' => [
            "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #", "#   #",
        ],
        _ => ["     "; 7],
    }
}

/// The offline picture as H.264 NAL units (no start codes, no length prefixes).
#[derive(Clone, Debug)]
pub struct OfflineH264 {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    /// The IDR picture, with `idr_pic_id` 0 and 1 (consecutive IDRs must differ).
    idr: [Vec<u8>; 2],
    mbs: u32,
}

/// `log2_max_frame_num`: frame numbers wrap at 256 (a GOP is shorter).
const LOG2_MAX_FRAME_NUM: u8 = 8;

impl OfflineH264 {
    /// A `width`×`height` picture (multiples of 16, at least 64×32) at `fps` frames a second.
    pub fn new(width: u32, height: u32, fps: u32) -> OfflineH264 {
        let width = (width.clamp(64, 4096) / 16) * 16;
        let height = (height.clamp(32, 2304) / 16) * 16;
        let fps = fps.clamp(1, 120);
        let (wm, hm) = (width / 16, height / 16);
        let sps = nal(0x67, &sps_rbsp(wm, hm, fps));
        let pps = nal(0x68, &pps_rbsp());
        let luma = picture(width as usize, height as usize);
        let idr = [
            nal(0x65, &idr_rbsp(&luma, wm as usize, hm as usize, 0)),
            nal(0x65, &idr_rbsp(&luma, wm as usize, hm as usize, 1)),
        ];
        OfflineH264 {
            width,
            height,
            fps,
            sps,
            pps,
            idr,
            mbs: wm * hm,
        }
    }

    /// The IDR slice; `n` tells consecutive IDRs apart.
    pub fn idr(&self, n: u64) -> &[u8] {
        &self.idr[(n % 2) as usize]
    }

    /// A P picture that repeats the last one (every macroblock skipped); `frame_num` counts
    /// pictures since the IDR (1, 2, …).
    pub fn repeat(&self, frame_num: u32) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.ue(0); // first_mb_in_slice
        w.ue(5); // slice_type: P, all slices
        w.ue(0); // pic_parameter_set_id
        w.put(frame_num % (1 << LOG2_MAX_FRAME_NUM), LOG2_MAX_FRAME_NUM);
        w.put(0, 1); // num_ref_idx_active_override_flag
        w.put(0, 1); // ref_pic_list_modification_flag_l0
        w.put(0, 1); // adaptive_ref_pic_marking_mode_flag
        w.se(0); // slice_qp_delta
        w.ue(1); // disable_deblocking_filter_idc
        w.ue(self.mbs); // mb_skip_run: the whole picture
        w.trailing_bits();
        nal(0x41, &w.finish())
    }
}

fn nal(header: u8, rbsp: &[u8]) -> Vec<u8> {
    nal_with(&[header], rbsp)
}

/// A NAL unit: its header, then the escaped RBSP.
fn nal_with(header: &[u8], rbsp: &[u8]) -> Vec<u8> {
    let mut out = header.to_vec();
    out.extend(escape_rbsp(rbsp));
    out
}

fn sps_rbsp(wm: u32, hm: u32, fps: u32) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.put(66, 8); // profile_idc: Baseline
    w.put(0b1100_0000, 8); // constraint_set0 and 1: Constrained Baseline
    let level = match wm * hm {
        0..=396 => 21,
        397..=1620 => 31,
        1621..=8192 => 41,
        _ => 51,
    };
    w.put(level, 8);
    w.ue(0); // seq_parameter_set_id
    w.ue(u32::from(LOG2_MAX_FRAME_NUM) - 4);
    w.ue(2); // pic_order_cnt_type: output order is decode order
    w.ue(1); // max_num_ref_frames
    w.put(0, 1); // gaps_in_frame_num_value_allowed_flag
    w.ue(wm - 1);
    w.ue(hm - 1);
    w.put(1, 1); // frame_mbs_only_flag
    w.put(1, 1); // direct_8x8_inference_flag
    w.put(0, 1); // frame_cropping_flag
    w.put(1, 1); // vui_parameters_present_flag
    w.put(0, 1); // aspect_ratio_info_present_flag
    w.put(0, 1); // overscan_info_present_flag
    w.put(0, 1); // video_signal_type_present_flag
    w.put(0, 1); // chroma_loc_info_present_flag
    w.put(1, 1); // timing_info_present_flag
    w.put(1, 32); // num_units_in_tick
    w.put(2 * fps, 32); // time_scale
    w.put(1, 1); // fixed_frame_rate_flag
    w.put(0, 1); // nal_hrd_parameters_present_flag
    w.put(0, 1); // vcl_hrd_parameters_present_flag
    w.put(0, 1); // pic_struct_present_flag
    w.put(1, 1); // bitstream_restriction_flag
    w.put(1, 1); // motion_vectors_over_pic_boundaries_flag
    w.ue(0); // max_bytes_per_pic_denom
    w.ue(0); // max_bits_per_mb_denom
    w.ue(16); // log2_max_mv_length_horizontal
    w.ue(16); // log2_max_mv_length_vertical
    w.ue(0); // max_num_reorder_frames: no delay in decoders
    w.ue(1); // max_dec_frame_buffering
    w.trailing_bits();
    w.finish()
}

fn pps_rbsp() -> Vec<u8> {
    let mut w = BitWriter::default();
    w.ue(0); // pic_parameter_set_id
    w.ue(0); // seq_parameter_set_id
    w.put(0, 1); // entropy_coding_mode_flag: CAVLC
    w.put(0, 1); // bottom_field_pic_order_in_frame_present_flag
    w.ue(0); // num_slice_groups_minus1
    w.ue(0); // num_ref_idx_l0_default_active_minus1
    w.ue(0); // num_ref_idx_l1_default_active_minus1
    w.put(0, 1); // weighted_pred_flag
    w.put(0, 2); // weighted_bipred_idc
    w.se(0); // pic_init_qp_minus26
    w.se(0); // pic_init_qs_minus26
    w.se(0); // chroma_qp_index_offset
    w.put(1, 1); // deblocking_filter_control_present_flag
    w.put(0, 1); // constrained_intra_pred_flag
    w.put(0, 1); // redundant_pic_cnt_present_flag
    w.trailing_bits();
    w.finish()
}

/// The luma plane: black, the message centred in white.
fn picture(width: usize, height: usize) -> Vec<u8> {
    let mut luma = vec![BLACK; width * height];
    let n = MESSAGE.chars().count();
    // The largest scale that fits, at most 6; each letter is 5 wide with a gap of 1.
    let scale = (width / (n * 6 + 2)).clamp(1, 6);
    let (tw, th) = (n * 6 * scale, 7 * scale);
    if tw > width || th > height {
        return luma;
    }
    let x0 = (width - tw) / 2;
    // On a macroblock row boundary plus one, so that fewer rows hold text.
    let y0 = (((height - th) / 2) / 16 * 16 + 1).min(height - th);
    for (i, c) in MESSAGE.chars().enumerate() {
        for (gy, row) in glyph(c).iter().enumerate() {
            for (gx, b) in row.bytes().enumerate() {
                if b != b'#' {
                    continue;
                }
                for dy in 0..scale {
                    let y = y0 + gy * scale + dy;
                    let x = x0 + (i * 6 + gx) * scale;
                    luma[y * width + x..y * width + x + scale].fill(WHITE);
                }
            }
        }
    }
    luma
}

/// The IDR slice of `luma`: each macroblock `I_16x16` DC-predicted without residual where that
/// reproduces it exactly, else `I_PCM`.
fn idr_rbsp(luma: &[u8], wm: usize, hm: usize, idr_pic_id: u32) -> Vec<u8> {
    let width = wm * 16;
    let mut w = BitWriter::default();
    w.ue(0); // first_mb_in_slice
    w.ue(7); // slice_type: I, all slices
    w.ue(0); // pic_parameter_set_id
    w.put(0, LOG2_MAX_FRAME_NUM); // frame_num
    w.ue(idr_pic_id);
    w.put(0, 1); // no_output_of_prior_pics_flag
    w.put(0, 1); // long_term_reference_flag
    w.se(0); // slice_qp_delta
    w.ue(1); // disable_deblocking_filter_idc
             // What the decoder reconstructs, to predict from; which macroblocks are I_PCM.
    let mut recon = vec![0u8; luma.len()];
    let mut pcm = vec![false; wm * hm];
    for my in 0..hm {
        for mx in 0..wm {
            let at = |x: usize, y: usize| (my * 16 + y) * width + mx * 16 + x;
            let top = (my > 0).then(|| {
                (0..16)
                    .map(|x| u32::from(recon[at(x, 0) - width]))
                    .sum::<u32>()
            });
            let left =
                (mx > 0).then(|| (0..16).map(|y| u32::from(recon[at(0, y) - 1])).sum::<u32>());
            let pred = match (top, left) {
                (Some(t), Some(l)) => (t + l + 16) >> 5,
                (Some(s), None) | (None, Some(s)) => (s + 8) >> 4,
                (None, None) => u32::from(GREY),
            };
            let flat = (0..16).all(|y| (0..16).all(|x| luma[at(x, y)] == BLACK));
            if flat && pred == u32::from(BLACK) {
                w.ue(3); // mb_type I_16x16_2_0_0: DC prediction, no coded residual
                w.ue(0); // intra_chroma_pred_mode: DC (every chroma sample is 128)
                w.se(0); // mb_qp_delta
                         // The luma DC block has no coefficient: coeff_token for TotalCoeff 0 by nC,
                         // from the neighbours' 4×4 blocks (16 for I_PCM, 0 otherwise).
                let n_a = (mx > 0).then(|| if pcm[my * wm + mx - 1] { 16 } else { 0 });
                let n_b = (my > 0).then(|| if pcm[(my - 1) * wm + mx] { 16 } else { 0 });
                let nc = match (n_a, n_b) {
                    (Some(a), Some(b)) => (a + b + 1) >> 1,
                    (Some(n), None) | (None, Some(n)) => n,
                    (None, None) => 0,
                };
                match nc {
                    0..=1 => w.put(0b1, 1),
                    2..=3 => w.put(0b11, 2),
                    4..=7 => w.put(0b1111, 4),
                    _ => w.put(0b000011, 6),
                }
                for y in 0..16 {
                    recon[at(0, y)..at(0, y) + 16].fill(BLACK);
                }
            } else {
                pcm[my * wm + mx] = true;
                w.ue(25); // mb_type I_PCM
                w.align_zero(); // pcm_alignment_zero_bit
                for y in 0..16 {
                    for x in 0..16 {
                        w.put(u32::from(luma[at(x, y)]), 8);
                    }
                    recon[at(0, y)..at(0, y) + 16].copy_from_slice(&luma[at(0, y)..at(0, y) + 16]);
                }
                for _ in 0..128 {
                    w.put(u32::from(GREY), 8);
                }
            }
        }
    }
    w.trailing_bits();
    w.finish()
}

/// One silent AAC-LC frame (1024 samples) for `channels` 1 or 2: a single or channel pair
/// element whose streams have no scale factor band, then the end element.
pub fn aac_silence(channels: u8) -> Vec<u8> {
    let mut w = BitWriter::default();
    let ics = |w: &mut BitWriter| {
        w.put(100, 8); // global_gain (no band uses it)
        w.put(0, 1); // ics_reserved_bit
        w.put(0, 2); // window_sequence: ONLY_LONG
        w.put(0, 1); // window_shape
        w.put(0, 6); // max_sfb: no band
        w.put(0, 1); // predictor_data_present
        w.put(0, 1); // pulse_data_present
        w.put(0, 1); // tns_data_present
        w.put(0, 1); // gain_control_data_present
    };
    if channels >= 2 {
        w.put(1, 3); // ID_CPE
        w.put(0, 4); // element_instance_tag
        w.put(0, 1); // common_window
        ics(&mut w);
        ics(&mut w);
    } else {
        w.put(0, 3); // ID_SCE
        w.put(0, 4);
        ics(&mut w);
    }
    w.put(7, 3); // ID_END
    w.finish()
}

/// A silent 20 ms Opus packet (CELT, fullband), mono or stereo.
pub fn opus_silence(channels: u8) -> Vec<u8> {
    vec![if channels >= 2 { 0xfc } else { 0xf8 }, 0xff, 0xfe]
}

/// `samples` of G.711 silence (the code of zero: 0xff in µ-law, 0xd5 in A-law).
pub fn g711_silence(mu_law: bool, samples: usize) -> Vec<u8> {
    vec![if mu_law { 0xff } else { 0xd5 }; samples]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bits::BitReader;

    #[test]
    fn exp_golomb_codes_read_back() {
        let mut w = BitWriter::default();
        for v in [0u32, 1, 2, 3, 7, 25, 1000, 65_535, u32::MAX - 1] {
            w.ue(v);
        }
        for v in [0i32, 1, -1, 5, -5, 1000] {
            w.se(v);
        }
        let data = w.finish();
        let mut r = BitReader::new(&data);
        for v in [0u32, 1, 2, 3, 7, 25, 1000, 65_535, u32::MAX - 1] {
            assert_eq!(r.read_ue().unwrap(), v);
        }
        for v in [0i32, 1, -1, 5, -5, 1000] {
            assert_eq!(r.read_se().unwrap(), v);
        }
    }

    #[test]
    fn escaping_breaks_start_code_patterns() {
        assert_eq!(
            escape_rbsp(&[0, 0, 1, 0, 0, 0]),
            vec![0, 0, 3, 1, 0, 0, 3, 0]
        );
        assert_eq!(escape_rbsp(&[0, 0, 4]), vec![0, 0, 4]);
        assert_eq!(
            crate::bits::unescape_rbsp(&escape_rbsp(&[0, 0, 2, 0, 0, 3])),
            vec![0, 0, 2, 0, 0, 3]
        );
    }

    #[test]
    fn the_offline_picture_has_parameters_our_parser_reads() {
        let h = OfflineH264::new(1280, 720, 25);
        let sps = crate::h264::parse_sps(&h.sps).unwrap();
        assert_eq!((sps.width, sps.height), (1280, 720));
        // Mostly flat: far smaller than the raw picture.
        assert!(h.idr(0).len() < 64 * 1024, "{}", h.idr(0).len());
        assert_ne!(h.idr(0), h.idr(1));
        assert!(h.repeat(1).len() < 16);
    }

    #[test]
    fn silent_aac_frames_are_small() {
        assert_eq!(aac_silence(2).len(), 7);
        assert_eq!(aac_silence(1).len(), 4);
    }
}
