//! The offline picture in AV1 (Main profile, 8-bit 4:2:0): black with "STREAM IS OFFLINE"
//! written across it (the H.264 picture's luma), coded by hand.
//!
//! The bitstream is the low-overhead format (every OBU carries its size, no Annex B). The
//! sequence header turns off every tool it can (filter intra, intra edge filter, CDEF, loop
//! restoration, superres, order hints, warped and compound motion) and lets each frame choose
//! the screen content tools. Frames disable CDF adaptation (`disable_cdf_update`), so the
//! symbol coder below always codes with the specification's default CDFs, and only the few
//! tables of the symbols actually coded are carried here. There is one tile, 64×64
//! superblocks, the loop filter is off and `TX_MODE_LARGEST` means no transform size is coded.
//!
//! Intra prediction with no neighbours gives grey (128), so black needs something coded. Of
//! the two ways, a palette beats a DC coefficient: it needs no coefficient CDFs (which depend
//! on the quantizer) and no inverse transform whose rounding has to come out at exactly 16,
//! and it draws the text too. The key frame enables `allow_screen_content_tools`, and each
//! block (64×64, or its part inside the frame at the right and bottom edges) is coded one of
//! two ways:
//! - DC-predicted (luma and chroma) when that gives its samples exactly: the block is black
//!   and every neighbouring sample DC prediction reads (the row above, the column to the left)
//!   is black, so the prediction is 16;
//! - otherwise with a two-colour luma palette (16 and 235, taken from the palette cache when a
//!   neighbour has it) and its colour index map: the first block (nothing to predict from),
//!   the blocks with text, and those next to text that touches their edge.
//!
//! Every block is `skip` (no residual), chroma is always DC-predicted: 128 from no neighbours,
//! and 128 from neighbours that are 128.
//!
//! The other pictures of a GOP are inter frames in which every block is an exact copy of the
//! key frame. `show_existing_frame` would be one byte, but it cannot show the key frame again:
//! a key frame shown when decoded has `showable_frame` 0, which forbids showing it again (and
//! showing a key frame that way would reset the decoder like a new key frame). Instead, each
//! repeat is an `INTER_FRAME` that refreshes no reference slot and enables segmentation with
//! one segment whose features are `SEG_LVL_REF_FRAME` (LAST_FRAME, which is the key frame),
//! `SEG_LVL_SKIP` and `SEG_LVL_GLOBALMV`: a block then reads only its segment id (always 0)
//! and is a skipped, single-reference `GLOBALMV` block whose global motion is the identity,
//! i.e. a whole-sample copy with no residual. No motion vector prediction context is involved.
//! (`SEG_LVL_REF_FRAME` fixes `is_inter` and the reference, `SEG_LVL_SKIP` the skip flag and
//! `SEG_LVL_GLOBALMV` the mode; with all three no decoder has anything left to read or infer
//! differently.)

use super::{picture, BLACK, WHITE};
use crate::av1::{OBU_SEQUENCE_HEADER, OBU_TEMPORAL_DELIMITER};
use crate::bits::BitWriter;

/// `OBU_FRAME`: a frame header and its tile group in one OBU.
const OBU_FRAME: u8 = 6;
/// The quantizer index: not zero (that would make frames lossless); no residual is coded.
const BASE_Q_IDX: u32 = 100;
/// `primary_ref_frame`: no primary reference, so every frame starts from the default CDFs.
const PRIMARY_REF_NONE: u32 = 7;
/// `LAST_FRAME`, the reference of every block of a repeat.
const LAST_FRAME: u32 = 1;
/// The superblock, 64×64 luma samples, in 4×4 units (`Mi_Width_Log2` 4).
const SB_LOG2: u32 = 4;
/// The two palette colours (ascending, as the palette syntax requires).
const PALETTE: [u8; 2] = [BLACK, WHITE];
/// `EC_PROB_SHIFT` and `EC_MIN_PROB` of the symbol coder.
const EC_PROB_SHIFT: u32 = 6;
const EC_MIN_PROB: u32 = 4;

/// Annex A levels: `seq_level_idx`, MaxPicSize, MaxHSize, MaxVSize, MaxDisplayRate.
const LEVELS: [(u32, u64, u32, u32, u64); 11] = [
    (0, 147_456, 2048, 1152, 4_423_680),
    (1, 278_784, 2816, 1584, 8_363_520),
    (4, 665_856, 4352, 2448, 19_975_680),
    (5, 1_065_024, 5504, 3096, 31_950_720),
    (8, 2_359_296, 6144, 3456, 70_778_880),
    (9, 2_359_296, 6144, 3456, 141_557_760),
    (12, 8_912_896, 8192, 4352, 267_386_880),
    (13, 8_912_896, 8192, 4352, 534_773_760),
    (14, 8_912_896, 8192, 4352, 1_069_547_520),
    (16, 35_651_584, 16384, 8704, 1_069_547_520),
    (17, 35_651_584, 16384, 8704, 2_139_095_040),
];

// Default CDFs (AV1 specification, section 10: cumulative, the last entry 32768; the adaptation
// counter is left out because adaptation is disabled).

/// `Default_Partition_W8_Cdf` … `W64`, by context (left · 2 + above).
const PARTITION_W8: [[u16; 4]; 4] = [
    [19132, 25510, 30392, 32768],
    [13928, 19855, 28540, 32768],
    [12522, 23679, 28629, 32768],
    [9896, 18783, 25853, 32768],
];
const PARTITION_W16: [[u16; 10]; 4] = [
    [
        15597, 20929, 24571, 26706, 27664, 28821, 29601, 30571, 31902, 32768,
    ],
    [
        7925, 11043, 16785, 22470, 23971, 25043, 26651, 28701, 29834, 32768,
    ],
    [
        5414, 13269, 15111, 20488, 22360, 24500, 25537, 26336, 32117, 32768,
    ],
    [
        2662, 6362, 8614, 20860, 23053, 24778, 26436, 27829, 31171, 32768,
    ],
];
const PARTITION_W32: [[u16; 10]; 4] = [
    [
        18462, 20920, 23124, 27647, 28227, 29049, 29519, 30178, 31544, 32768,
    ],
    [
        7689, 9060, 12056, 24992, 25660, 26182, 26951, 28041, 29052, 32768,
    ],
    [
        6015, 9009, 10062, 24544, 25409, 26545, 27071, 27526, 32047, 32768,
    ],
    [
        1394, 2208, 2796, 28614, 29061, 29466, 29840, 30185, 31899, 32768,
    ],
];
const PARTITION_W64: [[u16; 10]; 4] = [
    [
        20137, 21547, 23078, 29566, 29837, 30261, 30524, 30892, 31724, 32768,
    ],
    [
        6732, 7490, 9497, 27944, 28250, 28515, 28969, 29630, 30104, 32768,
    ],
    [
        5945, 7663, 8348, 28683, 29117, 29749, 30064, 30298, 32238, 32768,
    ],
    [
        870, 1212, 1487, 31198, 31394, 31574, 31743, 31881, 32332, 32768,
    ],
];
/// `Default_Skip_Cdf`, by the number of skipped neighbours.
const SKIP: [[u16; 2]; 3] = [[31671, 32768], [16515, 32768], [4576, 32768]];
/// `Default_Intra_Frame_Y_Mode_Cdf[0][0]`: both neighbours DC_PRED (or missing).
const KF_Y_MODE_DC_DC: [u16; 13] = [
    15588, 17027, 19338, 20218, 20682, 21110, 21825, 23244, 24189, 28165, 29093, 30466, 32768,
];
/// `Default_Uv_Mode_Cfl_Not_Allowed_Cdf[DC_PRED]` (blocks wider or taller than 32).
const UV_MODE_DC: [u16; 13] = [
    22631, 24152, 25378, 25661, 25986, 26520, 27055, 27923, 28244, 30059, 30941, 31961, 32768,
];
/// `Default_Uv_Mode_Cfl_Allowed_Cdf[DC_PRED]` (blocks of at most 32×32).
const UV_MODE_CFL_DC: [u16; 14] = [
    10407, 11208, 12900, 13181, 13823, 14175, 14899, 15656, 15986, 20086, 20995, 22455, 24212,
    32768,
];
/// `Default_Palette_Y_Mode_Cdf[bsizeCtx][ctx]` (`has_palette_y`).
const PALETTE_Y_MODE: [[[u16; 2]; 3]; 7] = [
    [[31676, 32768], [3419, 32768], [1261, 32768]],
    [[31912, 32768], [2859, 32768], [980, 32768]],
    [[31823, 32768], [3400, 32768], [781, 32768]],
    [[32030, 32768], [3561, 32768], [904, 32768]],
    [[32309, 32768], [7337, 32768], [1462, 32768]],
    [[32265, 32768], [4015, 32768], [1521, 32768]],
    [[32450, 32768], [7946, 32768], [129, 32768]],
];
/// `Default_Palette_Uv_Mode_Cdf[ctx]` (`has_palette_uv`), ctx: the block has a luma palette.
const PALETTE_UV_MODE: [[u16; 2]; 2] = [[32461, 32768], [21488, 32768]];
/// `Default_Palette_Y_Size_Cdf[bsizeCtx]` (`palette_size_y_minus_2`).
const PALETTE_Y_SIZE: [[u16; 7]; 7] = [
    [7952, 13000, 18149, 21478, 25527, 29241, 32768],
    [7139, 11421, 16195, 19544, 23666, 28073, 32768],
    [7788, 12741, 17325, 20500, 24315, 28530, 32768],
    [8271, 14064, 18246, 21564, 25071, 28533, 32768],
    [12725, 19180, 21863, 24839, 27535, 30120, 32768],
    [9711, 14888, 16923, 21052, 25661, 27875, 32768],
    [14940, 20797, 21678, 24186, 27033, 28999, 32768],
];
/// `Default_Palette_Size_2_Y_Color_Cdf[ctx]` (`palette_color_idx_y` of a two-colour palette).
const PALETTE_2_Y_COLOR: [[u16; 2]; 5] = [
    [28710, 32768],
    [16384, 32768],
    [10553, 32768],
    [27036, 32768],
    [31603, 32768],
];
/// `Palette_Color_Context`: the colour context by `ColorContextHash` (unused hashes: 0).
const PALETTE_COLOR_CONTEXT: [usize; 9] = [0, 0, 0, 0, 0, 4, 3, 2, 1];
/// `Default_Segment_Id_Cdf[ctx]`.
const SEGMENT_ID: [[u16; 8]; 3] = [
    [5622, 7893, 16093, 18233, 27809, 28373, 32533, 32768],
    [14274, 18230, 22557, 24935, 29980, 30851, 32344, 32768],
    [27527, 28487, 28723, 28890, 32397, 32647, 32679, 32768],
];
/// The CDF `read_bool` (and so `L(n)`) uses.
const BOOL: [u16; 2] = [1 << 14, 1 << 15];

/// The offline picture as AV1 temporal units (low-overhead OBUs, each with its size).
pub struct OfflineAv1 {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// The sequence header OBU (header, size, payload).
    pub sequence_header: Vec<u8>,
    key: Vec<u8>,
    repeat: Vec<u8>,
}

impl OfflineAv1 {
    /// A `width`×`height` picture (multiples of 8, 64×32 to 4096×2304) at `fps` frames a
    /// second (the frame rate only chooses the level: the stream carries no timing).
    pub fn new(width: u32, height: u32, fps: u32) -> OfflineAv1 {
        let width = (width.clamp(64, 4096) / 8) * 8;
        let height = (height.clamp(32, 2304) / 8) * 8;
        let fps = fps.clamp(1, 120);
        let sequence_header = obu(OBU_SEQUENCE_HEADER, &sequence_header(width, height, fps));
        let (w, h) = (width as usize, height as usize);
        let luma = picture(w, h);
        let mut key = obu(OBU_TEMPORAL_DELIMITER, &[]);
        key.extend_from_slice(&sequence_header);
        key.extend(obu(OBU_FRAME, &key_frame(&luma, w, h)));
        let mut repeat = obu(OBU_TEMPORAL_DELIMITER, &[]);
        repeat.extend(obu(OBU_FRAME, &repeat_frame(w, h)));
        OfflineAv1 {
            width,
            height,
            fps,
            sequence_header,
            key,
            repeat,
        }
    }

    /// The key frame's temporal unit: temporal delimiter, sequence header, and one frame OBU
    /// (`KEY_FRAME`, shown).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// A temporal unit that shows the key frame's picture again: temporal delimiter and one
    /// frame OBU, an inter frame of skipped blocks copying the key frame (see the module
    /// documentation for why not `show_existing_frame`). Every repeat is the same, so `n` (the
    /// pictures since the key frame, 1, 2, …) is not needed: no order hints are coded.
    pub fn repeat(&self, _n: u32) -> Vec<u8> {
        self.repeat.clone()
    }
}

/// An OBU with `obu_has_size_field`: header, LEB128 size, payload.
fn obu(obu_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 6);
    out.push((obu_type & 0x0f) << 3 | 0x02);
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(payload);
    out
}

/// The lowest level whose picture size, dimensions and display rate allow the stream.
fn level(width: u32, height: u32, fps: u32) -> u32 {
    let samples = u64::from(width) * u64::from(height);
    LEVELS
        .iter()
        .find(|&&(_, pic, max_w, max_h, rate)| {
            samples <= pic && width <= max_w && height <= max_h && samples * u64::from(fps) <= rate
        })
        .map_or(31, |l| l.0)
}

/// The sequence header OBU's payload.
fn sequence_header(width: u32, height: u32, fps: u32) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.put(0, 3); // seq_profile: Main
    w.put(0, 1); // still_picture
    w.put(0, 1); // reduced_still_picture_header
    w.put(0, 1); // timing_info_present_flag
    w.put(0, 1); // initial_display_delay_present_flag
    w.put(0, 5); // operating_points_cnt_minus_1
    w.put(0, 12); // operating_point_idc[0]
    let level = level(width, height, fps);
    w.put(level, 5); // seq_level_idx[0]
    if level > 7 {
        w.put(0, 1); // seq_tier[0]: Main
    }
    let wbits = 32 - (width - 1).leading_zeros();
    let hbits = 32 - (height - 1).leading_zeros();
    w.put(wbits - 1, 4); // frame_width_bits_minus_1
    w.put(hbits - 1, 4); // frame_height_bits_minus_1
    w.put(width - 1, wbits as u8); // max_frame_width_minus_1
    w.put(height - 1, hbits as u8); // max_frame_height_minus_1
    w.put(0, 1); // frame_id_numbers_present_flag
    w.put(0, 1); // use_128x128_superblock
    w.put(0, 1); // enable_filter_intra
    w.put(0, 1); // enable_intra_edge_filter
    w.put(0, 1); // enable_interintra_compound
    w.put(0, 1); // enable_masked_compound
    w.put(0, 1); // enable_warped_motion
    w.put(0, 1); // enable_dual_filter
    w.put(0, 1); // enable_order_hint
    w.put(1, 1); // seq_choose_screen_content_tools: each frame says
    w.put(0, 1); // seq_choose_integer_mv
    w.put(0, 1); // seq_force_integer_mv
    w.put(0, 1); // enable_superres
    w.put(0, 1); // enable_cdef
    w.put(0, 1); // enable_restoration
                 // color_config
    w.put(0, 1); // high_bitdepth
    w.put(0, 1); // mono_chrome
    w.put(1, 1); // color_description_present_flag
    w.put(1, 8); // color_primaries: BT.709
    w.put(1, 8); // transfer_characteristics: BT.709
    w.put(1, 8); // matrix_coefficients: BT.709
    w.put(0, 1); // color_range: studio (video range)
    w.put(0, 2); // chroma_sample_position: unknown
    w.put(0, 1); // separate_uv_delta_q
    w.put(0, 1); // film_grain_params_present
    w.trailing_bits();
    w.finish()
}

/// The key frame OBU's payload: the uncompressed header, then the tile.
fn key_frame(luma: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.put(0, 1); // show_existing_frame
    w.put(0, 2); // frame_type: KEY_FRAME
    w.put(1, 1); // show_frame (so error_resilient_mode is 1, all slots are refreshed)
    w.put(1, 1); // disable_cdf_update
    w.put(1, 1); // allow_screen_content_tools: palettes
    w.put(0, 1); // frame_size_override_flag: the sequence header's size
    w.put(0, 1); // render_and_frame_size_different
    w.put(0, 1); // allow_intrabc
    frame_header_tail(&mut w, width, height, false);
    w.align_zero(); // byte_alignment
    let mut out = w.finish();
    out.extend(Tile::new(Some(luma), width, height).code());
    out
}

/// A repeat frame OBU's payload: the uncompressed header of an inter frame, then the tile.
fn repeat_frame(width: usize, height: usize) -> Vec<u8> {
    let mut w = BitWriter::default();
    w.put(0, 1); // show_existing_frame
    w.put(1, 2); // frame_type: INTER_FRAME
    w.put(1, 1); // show_frame
    w.put(0, 1); // error_resilient_mode
    w.put(1, 1); // disable_cdf_update
    w.put(0, 1); // allow_screen_content_tools
    w.put(0, 1); // frame_size_override_flag
    w.put(PRIMARY_REF_NONE, 3); // primary_ref_frame
    w.put(0, 8); // refresh_frame_flags: the key frame stays in every slot
    for _ in 0..7 {
        w.put(0, 3); // ref_frame_idx[i]: slot 0
    }
    w.put(0, 1); // render_and_frame_size_different
    w.put(0, 1); // allow_high_precision_mv
    w.put(0, 1); // is_filter_switchable
    w.put(0, 2); // interpolation_filter: EIGHTTAP (whole-sample copies are exact anyway)
    w.put(0, 1); // is_motion_mode_switchable
    frame_header_tail(&mut w, width, height, true);
    w.align_zero(); // byte_alignment
    let mut out = w.finish();
    out.extend(Tile::new(None, width, height).code());
    out
}

/// The frame header from `tile_info` on (the same for both frame types but for
/// segmentation and the inter-only fields).
fn frame_header_tail(w: &mut BitWriter, width: usize, height: usize, inter: bool) {
    tile_info(w, width, height);
    // quantization_params
    w.put(BASE_Q_IDX, 8); // base_q_idx
    w.put(0, 1); // DeltaQYDc: delta_coded
    w.put(0, 1); // DeltaQUDc: delta_coded
    w.put(0, 1); // DeltaQUAc: delta_coded
    w.put(0, 1); // using_qmatrix
                 // segmentation_params
    if inter {
        w.put(1, 1); // segmentation_enabled (update_map and update_data implied)
        for segment in 0..8 {
            for feature in 0..8 {
                let enabled = segment == 0 && feature >= 5;
                w.put(u32::from(enabled), 1); // feature_enabled
                if enabled && feature == 5 {
                    w.put(LAST_FRAME, 3); // SEG_LVL_REF_FRAME's feature_value
                }
                // SEG_LVL_SKIP (6) and SEG_LVL_GLOBALMV (7) have no value.
            }
        }
    } else {
        w.put(0, 1); // segmentation_enabled
    }
    w.put(0, 1); // delta_q_present
                 // loop_filter_params
    w.put(0, 6); // loop_filter_level[0]
    w.put(0, 6); // loop_filter_level[1]
    w.put(0, 3); // loop_filter_sharpness
    w.put(0, 1); // loop_filter_delta_enabled
    w.put(0, 1); // tx_mode_select: TX_MODE_LARGEST
    if inter {
        w.put(0, 1); // reference_select
    }
    w.put(0, 1); // reduced_tx_set
    if inter {
        for _ in 0..7 {
            w.put(0, 1); // is_global: identity global motion for every reference
        }
    }
}

/// `tile_info`: uniform spacing, as few tiles as allowed (one, within our size limits).
fn tile_info(w: &mut BitWriter, width: usize, height: usize) {
    let sb_cols = width.div_ceil(64);
    let sb_rows = height.div_ceil(64);
    let log2 = |target: usize| {
        let mut k = 0;
        while (1usize << k) < target {
            k += 1;
        }
        k
    };
    let max_log2_cols = log2(sb_cols.min(64));
    let max_log2_rows = log2(sb_rows.min(64));
    w.put(1, 1); // uniform_tile_spacing_flag
    if max_log2_cols > 0 {
        w.put(0, 1); // increment_tile_cols_log2
    }
    if max_log2_rows > 0 {
        w.put(0, 1); // increment_tile_rows_log2
    }
}

/// The tile of a frame: the partition of each superblock and its blocks' syntax.
struct Tile<'a> {
    sym: SymbolWriter,
    /// The key frame's picture (luma, `width`×`height`); `None` for a repeat.
    luma: Option<&'a [u8]>,
    width: usize,
    height: usize,
    mi_rows: usize,
    mi_cols: usize,
    /// `Mi_Width_Log2` of the block above each 4×4 column (the last block coded over it).
    above_width: Vec<u32>,
    /// `Mi_Height_Log2` of the block left of each 4×4 row.
    left_height: Vec<u32>,
    /// Whether the block above / to the left has a palette (its colours are always
    /// [`PALETTE`]).
    above_palette: Vec<bool>,
    left_palette: Vec<bool>,
}

impl<'a> Tile<'a> {
    /// The key frame's tile (drawing `luma`) or, without a picture, a repeat's.
    fn new(luma: Option<&'a [u8]>, width: usize, height: usize) -> Tile<'a> {
        let (mi_cols, mi_rows) = (width / 4, height / 4);
        // Blocks may reach past the frame's edge: room for one superblock more.
        Tile {
            sym: SymbolWriter::new(),
            luma,
            width,
            height,
            mi_rows,
            mi_cols,
            above_width: vec![0; mi_cols + 16],
            left_height: vec![0; mi_rows + 16],
            above_palette: vec![false; mi_cols + 16],
            left_palette: vec![false; mi_rows + 16],
        }
    }

    /// The superblocks in raster order; the tile's bytes.
    fn code(mut self) -> Vec<u8> {
        for r in (0..self.mi_rows).step_by(1 << SB_LOG2) {
            for c in (0..self.mi_cols).step_by(1 << SB_LOG2) {
                self.partition(r, c, SB_LOG2);
            }
        }
        self.sym.finish()
    }

    /// `decode_partition` of the square block of 2^`bsl` 4×4 units at (`r`, `c`): whole where
    /// it fits, its upper or left half where only that fits (the other half is outside),
    /// split where neither fits. An 8×8 block always fits (the frame is a multiple of 8).
    fn partition(&mut self, r: usize, c: usize, bsl: u32) {
        if r >= self.mi_rows || c >= self.mi_cols || bsl == 0 {
            return;
        }
        let half = 1usize << (bsl - 1);
        let has_rows = r + half < self.mi_rows;
        let has_cols = c + half < self.mi_cols;
        let above = r > 0 && self.above_width.get(c).is_some_and(|&w| w < bsl);
        let left = c > 0 && self.left_height.get(r).is_some_and(|&h| h < bsl);
        let ctx = usize::from(left) * 2 + usize::from(above);
        let cdf: &[u16] = match bsl {
            1 => &PARTITION_W8[ctx],
            2 => &PARTITION_W16[ctx],
            3 => &PARTITION_W32[ctx],
            _ => &PARTITION_W64[ctx],
        };
        // The probability of partition type `k`.
        let p = |k: usize| u32::from(cdf[k]) - u32::from(cdf[k - 1]);
        if has_rows && has_cols {
            self.sym.symbol(0, cdf); // PARTITION_NONE
            self.block(r, c, bsl, bsl);
        } else if has_cols && bsl > 1 {
            // split_or_horz: VERT, SPLIT, HORZ_A, VERT_A, VERT_B and VERT_4 count as split.
            let psum = p(2) + p(3) + p(4) + p(6) + p(7) + p(9);
            self.split_or(psum);
            self.block(r, c, bsl, bsl - 1); // PARTITION_HORZ
        } else if has_rows && bsl > 1 {
            // split_or_vert: HORZ, SPLIT, HORZ_A, HORZ_B, VERT_A and HORZ_4 count as split.
            let psum = p(1) + p(3) + p(4) + p(5) + p(6) + p(8);
            self.split_or(psum);
            self.block(r, c, bsl - 1, bsl); // PARTITION_VERT
        } else {
            // PARTITION_SPLIT, implied.
            for (dr, dc) in [(0, 0), (0, half), (half, 0), (half, half)] {
                self.partition(r + dr, c + dc, bsl - 1);
            }
        }
    }

    /// `split_or_horz` / `split_or_vert` 0 (not split), split having probability `psum`.
    fn split_or(&mut self, psum: u32) {
        let p0 = (32768u32.saturating_sub(psum)).clamp(1, 32767) as u16;
        self.sym.symbol(0, &[p0, 32768]);
    }

    /// One block of 2^`wl`×2^`hl` 4×4 units; then the contexts later blocks read.
    fn block(&mut self, r: usize, c: usize, wl: u32, hl: u32) {
        let palette = match self.luma {
            Some(luma) => self.intra_block(luma, r, c, wl, hl),
            None => {
                self.copy_block(r, c);
                false
            }
        };
        let (w4, h4) = (1usize << wl, 1usize << hl);
        for i in c..c + w4 {
            if let (Some(w), Some(p)) = (self.above_width.get_mut(i), self.above_palette.get_mut(i))
            {
                *w = wl;
                *p = palette;
            }
        }
        for i in r..r + h4 {
            if let (Some(h), Some(p)) = (self.left_height.get_mut(i), self.left_palette.get_mut(i))
            {
                *h = hl;
                *p = palette;
            }
        }
    }

    /// A repeat's block: `segment_id` 0 (coded before `skip`, which segment 0 implies, as it
    /// implies the reference and the mode). Every segment id is 0, so the context is 2 when
    /// the above-left, above and left ids all exist, else 0.
    fn copy_block(&mut self, r: usize, c: usize) {
        let ctx = if r > 0 && c > 0 { 2 } else { 0 };
        self.sym.symbol(0, &SEGMENT_ID[ctx]);
    }

    /// A key frame block (`intra_frame_mode_info`, `palette_tokens`): skipped, DC_PRED for
    /// luma and chroma, a luma palette where DC prediction would not give the picture.
    /// Returns whether it has the palette.
    fn intra_block(&mut self, luma: &[u8], r: usize, c: usize, wl: u32, hl: u32) -> bool {
        let (avail_u, avail_l) = (r > 0, c > 0);
        let (x0, y0) = (c * 4, r * 4);
        let (bw, bh) = (4usize << wl, 4usize << hl);
        let palette = !self.dc_is_exact(luma, x0, y0, bw, bh);
        // skip: every block is skipped, so the context counts the neighbours.
        self.sym
            .symbol(1, &SKIP[usize::from(avail_u) + usize::from(avail_l)]);
        // intra_frame_y_mode: DC_PRED; the neighbours' modes are all DC_PRED too.
        self.sym.symbol(0, &KF_Y_MODE_DC_DC);
        // uv_mode: DC_PRED (CFL is allowed in blocks of at most 32×32).
        if wl.max(hl) <= 3 {
            self.sym.symbol(0, &UV_MODE_CFL_DC);
        } else {
            self.sym.symbol(0, &UV_MODE_DC);
        }
        // palette_mode_info (every block is from 8×8 to 64×64).
        let bsize_ctx = (wl + hl - 2) as usize;
        let above_pal = avail_u && self.above_palette.get(c) == Some(&true);
        let left_pal = avail_l && self.left_palette.get(r) == Some(&true);
        let ctx = usize::from(above_pal) + usize::from(left_pal);
        self.sym
            .symbol(usize::from(palette), &PALETTE_Y_MODE[bsize_ctx][ctx]); // has_palette_y
        if palette {
            self.sym.symbol(0, &PALETTE_Y_SIZE[bsize_ctx]); // palette_size_y_minus_2: 2
                                                            // The palette cache: the left block's colours, and the above block's if it is in
                                                            // the same superblock (never here: every block starts on a superblock's top row).
                                                            // Every palette is [`PALETTE`], so the cache is that or empty.
            let cached = left_pal || (y0 % 64 != 0 && above_pal);
            if cached {
                self.sym.literal(1, 1); // use_palette_color_cache_y: 16
                self.sym.literal(1, 1); // use_palette_color_cache_y: 235
            } else {
                self.sym.literal(u32::from(PALETTE[0]), 8); // palette_colors_y[0]
                self.sym.literal(3, 2); // palette_num_extra_bits_y: 8-bit deltas
                let delta = u32::from(PALETTE[1] - PALETTE[0]) - 1;
                self.sym.literal(delta, 8); // palette_delta_y
            }
        }
        // has_palette_uv: no (chroma is DC-predicted 128).
        self.sym.symbol(0, &PALETTE_UV_MODE[usize::from(palette)]);
        if palette {
            self.color_map(luma, x0, y0, bw, bh);
        }
        palette
    }

    /// Whether DC prediction reproduces the block at (`x0`, `y0`): it is black, and so is
    /// every sample the prediction averages (the row above and the column to the left, where
    /// they exist; at least one must). Blocks are at most 64×64, so the transform block is the
    /// block.
    fn dc_is_exact(&self, luma: &[u8], x0: usize, y0: usize, bw: usize, bh: usize) -> bool {
        if x0 == 0 && y0 == 0 {
            return false;
        }
        let (x1, y1) = ((x0 + bw).min(self.width), (y0 + bh).min(self.height));
        let black = |x: usize, y: usize| luma.get(y * self.width + x) == Some(&BLACK);
        (y0..y1).all(|y| (x0..x1).all(|x| black(x, y)))
            && (y0 == 0 || (x0..x1).all(|x| black(x, y0 - 1)))
            && (x0 == 0 || (y0..y1).all(|y| black(x0 - 1, y)))
    }

    /// `palette_tokens` for luma: the colour index of each on-screen sample (black 0, else 1)
    /// in wavefront order, the first as a literal, the others against their context.
    fn color_map(&mut self, luma: &[u8], x0: usize, y0: usize, bw: usize, bh: usize) {
        let ow = bw.min(self.width - x0);
        let oh = bh.min(self.height - y0);
        let mut map = vec![0u8; ow * oh];
        for y in 0..oh {
            for x in 0..ow {
                let v = luma.get((y0 + y) * self.width + x0 + x);
                map[y * ow + x] = u8::from(v.is_some_and(|&v| v != BLACK));
            }
        }
        self.sym.literal(u32::from(map[0]), 1); // color_index_map_y: NS(2) is one bit
        for i in 1..ow + oh - 1 {
            for j in (i.saturating_sub(oh - 1)..=i.min(ow - 1)).rev() {
                let (row, col) = (i - j, j);
                let (ctx, order) = color_context(&map, ow, row, col);
                let want = map[row * ow + col];
                let v = usize::from(order[1] == want);
                self.sym.symbol(v, &PALETTE_2_Y_COLOR[ctx]); // palette_color_idx_y
            }
        }
    }
}

/// `get_palette_color_context` for a two-colour map of row length `stride`: the context and
/// `ColorOrder` (the colours by neighbour score).
fn color_context(map: &[u8], stride: usize, r: usize, c: usize) -> (usize, [u8; 2]) {
    let mut scores = [0usize; 2];
    let at = |r: usize, c: usize| usize::from(map.get(r * stride + c) == Some(&1));
    if c > 0 {
        scores[at(r, c - 1)] += 2;
    }
    if r > 0 && c > 0 {
        scores[at(r - 1, c - 1)] += 1;
    }
    if r > 0 {
        scores[at(r - 1, c)] += 2;
    }
    let mut order = [0u8, 1];
    // The sort of the specification, for two colours: colour 1 first only if it scores more.
    if scores[1] > scores[0] {
        scores.swap(0, 1);
        order.swap(0, 1);
    }
    // Palette_Color_Hash_Multipliers: 1, 2 (and 2 for a third colour, scoring 0 here).
    let hash = scores[0] + 2 * scores[1];
    (PALETTE_COLOR_CONTEXT.get(hash).copied().unwrap_or(0), order)
}

/// The multi-symbol arithmetic encoder matching the specification's symbol decoder (section
/// 8.2): the decoder's value is the stream read as a binary fraction, and `low`/`rng` bound
/// the interval it must fall in.
struct SymbolWriter {
    out: Vec<u8>,
    /// The interval's low end: 15 bits aligned with the decoder's window and, above them,
    /// `pending` bits not yet written (a carry may still change them).
    low: u64,
    /// The interval's size, 2^15 to 2^16 - 1 after renormalization.
    rng: u32,
    pending: u32,
}

impl SymbolWriter {
    /// An empty coder: the interval is the whole of [0, 1).
    fn new() -> SymbolWriter {
        SymbolWriter {
            out: Vec::new(),
            low: 0,
            rng: 1 << 15,
            pending: 0,
        }
    }

    /// Symbol `s` of the `cdf.len()` symbols whose cumulative distribution is `cdf` (the
    /// specification's array without its counter).
    fn symbol(&mut self, s: usize, cdf: &[u16]) {
        let n = cdf.len();
        if n == 0 {
            return;
        }
        let s = s.min(n - 1);
        let r = self.rng;
        // The decoder's `cur` after comparing against symbol k: values from it up to the
        // previous one decode as k.
        let bound = |k: usize| {
            let f = 32768 - u32::from(cdf[k]).min(32768);
            (((r >> 8) * (f >> EC_PROB_SHIFT)) >> (7 - EC_PROB_SHIFT))
                + EC_MIN_PROB * (n - k - 1) as u32
        };
        let top = if s == 0 { r } else { bound(s - 1) };
        let bottom = bound(s);
        // The decoder measures its value down from the top of the interval.
        self.low += u64::from(r - top);
        self.rng = top - bottom;
        self.normalize();
    }

    /// `v`'s low `bits` bits, most significant first, as `read_literal` reads them.
    fn literal(&mut self, v: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.symbol(((v >> i) & 1) as usize, &BOOL);
        }
    }

    /// Doubles the range until it is at least 2^15, writing out the bits that leave.
    fn normalize(&mut self) {
        let d = self.rng.leading_zeros().saturating_sub(16);
        self.rng <<= d;
        self.low <<= d;
        self.pending += d;
        while self.pending >= 8 {
            let shift = 15 + self.pending - 8;
            let byte = self.low >> shift;
            self.carry(byte >> 8);
            self.out.push(byte as u8);
            self.low &= (1 << shift) - 1;
            self.pending -= 8;
        }
    }

    /// Adds `amount` to the bytes written (read as one big-endian number). The window's low
    /// end can pass 2^15 by up to two units of its last written bit, the carries of bits not
    /// yet written.
    fn carry(&mut self, mut amount: u64) {
        for byte in self.out.iter_mut().rev() {
            if amount == 0 {
                break;
            }
            let sum = u64::from(*byte) + amount;
            *byte = sum as u8;
            amount = sum >> 8;
        }
    }

    /// Ends the tile: the value chosen in the interval is the bits so far, a one where the
    /// decoder's 15-bit window starts, then zeros, which is exactly the padding `exit_symbol`
    /// requires (the one at `trailingBitPosition`, zeros to the end).
    fn finish(mut self) -> Vec<u8> {
        // The least value ≥ low that is 2^14 modulo 2^15; it is below low + 2^15 ≤ low + rng.
        let x = ((self.low + (1 << 14) - 1) >> 15 << 15) + (1 << 14);
        let bits = self.pending + 1;
        let mut v = x >> 14;
        self.carry(v >> bits);
        v &= (1 << bits) - 1;
        let padded = bits.div_ceil(8) * 8;
        v <<= padded - bits;
        for i in (0..padded / 8).rev() {
            self.out.push((v >> (8 * i)) as u8);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::av1::{parse_sequence_header, split_obus};

    /// The specification's symbol decoder (sections 8.2.2 to 8.2.6), without adaptation.
    struct SpecDecoder<'a> {
        data: &'a [u8],
        pos: usize,
        value: u32,
        range: u32,
        max_bits: i64,
    }

    impl<'a> SpecDecoder<'a> {
        fn bits(&mut self, n: usize) -> u32 {
            let mut v = 0;
            for _ in 0..n {
                let bit = (self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1;
                v = v << 1 | u32::from(bit);
                self.pos += 1;
            }
            v
        }

        fn new(data: &'a [u8]) -> SpecDecoder<'a> {
            let mut d = SpecDecoder {
                data,
                pos: 0,
                value: 0,
                range: 1 << 15,
                max_bits: 8 * data.len() as i64 - 15,
            };
            let n = (data.len() * 8).min(15);
            let buf = d.bits(n);
            d.value = ((1 << 15) - 1) ^ (buf << (15 - n));
            d
        }

        fn symbol(&mut self, cdf: &[u16]) -> usize {
            let n = cdf.len() as u32;
            let mut cur = self.range;
            let mut prev;
            let mut s = 0u32;
            loop {
                prev = cur;
                let f = 32768 - u32::from(cdf[s as usize]);
                cur = (((self.range >> 8) * (f >> EC_PROB_SHIFT)) >> (7 - EC_PROB_SHIFT))
                    + EC_MIN_PROB * (n - s - 1);
                if self.value >= cur {
                    break;
                }
                s += 1;
            }
            self.range = prev - cur;
            self.value -= cur;
            let bits = 15 - (31 - self.range.leading_zeros());
            self.range <<= bits;
            let num = (bits as i64).min(self.max_bits.max(0)) as u32;
            let new = self.bits(num as usize);
            let padded = new << (bits - num);
            self.value = padded ^ (((self.value + 1) << bits) - 1);
            self.max_bits -= i64::from(bits);
            s as usize
        }

        /// `exit_symbol`'s conformance requirements on the padding.
        fn check_exit(&mut self) {
            assert!(self.max_bits >= -14, "read too far: {}", self.max_bits);
            let trailing = self.pos as i64 - (self.max_bits + 15).min(15);
            self.pos += self.max_bits.max(0) as usize;
            assert_eq!(self.pos, self.data.len() * 8);
            let bit = |p: usize| (self.data[p / 8] >> (7 - p % 8)) & 1;
            assert_eq!(bit(trailing as usize), 1, "trailing bit");
            for p in trailing as usize + 1..self.pos {
                assert_eq!(bit(p), 0, "padding bit {p}");
            }
        }
    }

    #[test]
    fn the_symbol_coder_round_trips_through_the_specification_decoder() {
        let cdfs: [&[u16]; 6] = [
            &BOOL,
            &SKIP[2],
            &PARTITION_W64[3],
            &KF_Y_MODE_DC_DC,
            &SEGMENT_ID[0],
            &[32000, 32700, 32767, 32768],
        ];
        // A fixed pseudo-random sequence (xorshift), many symbols, also the unlikely ones.
        let mut x = 0x1234_5678u32;
        let mut symbols = Vec::new();
        for count in [0usize, 1, 7, 100, 5000] {
            symbols.clear();
            let mut w = SymbolWriter::new();
            for _ in 0..count {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let cdf = cdfs[(x % 6) as usize];
                let s = (x >> 8) as usize % cdf.len();
                w.symbol(s, cdf);
                symbols.push((s, cdf));
            }
            let data = w.finish();
            let mut d = SpecDecoder::new(&data);
            for (i, &(s, cdf)) in symbols.iter().enumerate() {
                assert_eq!(d.symbol(cdf), s, "count {count} symbol {i} cdf {cdf:?}");
            }
            d.check_exit();
        }
    }

    #[test]
    fn the_sequence_header_parses() {
        let v = OfflineAv1::new(1280, 720, 25);
        let info = parse_sequence_header(&v.sequence_header).unwrap();
        assert_eq!((info.max_width, info.max_height), (1280, 720));
        assert_eq!(info.seq_profile, 0);
        assert_eq!(info.bit_depth(), 8);
        assert!(info.subsampling_x && info.subsampling_y && !info.monochrome);
        assert_eq!(info.codec_string(), "av01.0.05M.08");
        let odd = OfflineAv1::new(1000, 30, 60);
        assert_eq!((odd.width, odd.height), (1000, 32));
        let info = parse_sequence_header(&odd.sequence_header).unwrap();
        assert_eq!((info.max_width, info.max_height), (1000, 32));
    }

    #[test]
    fn temporal_units_hold_the_intended_obus() {
        let v = OfflineAv1::new(1280, 720, 25);
        let types = |tu: &[u8]| {
            split_obus(tu)
                .unwrap()
                .iter()
                .map(|o| o.obu_type)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            types(v.key()),
            [OBU_TEMPORAL_DELIMITER, OBU_SEQUENCE_HEADER, OBU_FRAME]
        );
        assert_eq!(types(&v.repeat(1)), [OBU_TEMPORAL_DELIMITER, OBU_FRAME]);
        assert!(v.key().starts_with(&[0x12, 0x00]));
        assert_eq!(
            &v.key()[2..2 + v.sequence_header.len()],
            &v.sequence_header[..]
        );
        // The frame headers: a shown key frame, a shown inter frame.
        let key = split_obus(v.key()).unwrap()[2].payload[0];
        assert_eq!(key >> 4, 0b0001);
        let repeat = split_obus(&v.repeat(2)).unwrap()[1].payload[0];
        assert_eq!(repeat >> 4, 0b0011);
    }

    #[test]
    fn the_frames_are_small() {
        for (w, h) in [(1280, 720), (64, 32), (1288, 728), (4096, 2304)] {
            let v = OfflineAv1::new(w, h, 30);
            assert!(v.key().len() < 4096, "{w}x{h}: {}", v.key().len());
            assert!(v.repeat(1).len() < 1024, "{w}x{h}: {}", v.repeat(1).len());
        }
    }

    #[test]
    fn levels_follow_size_and_rate() {
        assert_eq!(level(1280, 720, 30), 5);
        assert_eq!(level(1280, 720, 60), 8);
        assert_eq!(level(1920, 1080, 30), 8);
        assert_eq!(level(4096, 32, 30), 4);
        assert_eq!(level(4096, 2304, 120), 17);
    }

    #[test]
    fn color_contexts() {
        // All black: the first row and column see one neighbour (hash 2), the rest three.
        let map = [0u8; 4];
        assert_eq!(color_context(&map, 2, 0, 1), (0, [0, 1]));
        assert_eq!(color_context(&map, 2, 1, 0), (0, [0, 1]));
        assert_eq!(color_context(&map, 2, 1, 1), (4, [0, 1]));
        // Left and above white, above-left black: colour 1 scores 4, colour 0 scores 1.
        let map = [0u8, 1, 1, 0];
        assert_eq!(color_context(&map, 2, 1, 1), (3, [1, 0]));
    }
}
