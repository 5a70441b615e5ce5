//! libopus, loaded at run time (`libopus.so.0`, Debian's `libopus0`, BSD-3).
//!
//! Every crate that builds libopus from source needs cmake, and linking it at build time would
//! make the binary need it on every machine: loaded when the first transcoder starts, the
//! server builds and runs anywhere and a path whose readers need no transcoding never touches
//! it. The API used is plain C functions on opaque pointers (no structures), stable since
//! libopus 1.0. This is the crate's one module with `unsafe` code.
#![allow(unsafe_code)]

use crate::TranscodeError;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

/// `OPUS_APPLICATION_AUDIO`: music and mixed content (a relay does not know it is speech).
const APPLICATION_AUDIO: c_int = 2049;
const SET_BITRATE_REQUEST: c_int = 4002;
const SET_COMPLEXITY_REQUEST: c_int = 4010;
/// libopus's complexity (0–10, default 10). At the bridge's bit rates (96–192 kbit/s) the
/// highest settings buy no audible quality and cost a third more CPU per stream
/// (docs/performance.md).
const COMPLEXITY: i32 = 8;
const GET_LOOKAHEAD_REQUEST: c_int = 4027;
const OK: c_int = 0;

type EncoderCreate = unsafe extern "C" fn(i32, c_int, c_int, *mut c_int) -> *mut c_void;
type EncodeFloat = unsafe extern "C" fn(*mut c_void, *const f32, c_int, *mut u8, i32) -> i32;
type EncoderCtl = unsafe extern "C" fn(*mut c_void, c_int, ...) -> c_int;
type Destroy = unsafe extern "C" fn(*mut c_void);
type DecoderCreate = unsafe extern "C" fn(i32, c_int, *mut c_int) -> *mut c_void;
type DecodeFloat =
    unsafe extern "C" fn(*mut c_void, *const u8, i32, *mut f32, c_int, c_int) -> c_int;

struct Lib {
    // Keeps the functions below loaded.
    _lib: libloading::Library,
    encoder_create: EncoderCreate,
    encode_float: EncodeFloat,
    encoder_ctl: EncoderCtl,
    encoder_destroy: Destroy,
    decoder_create: DecoderCreate,
    decode_float: DecodeFloat,
    decoder_destroy: Destroy,
}

fn load() -> Result<Lib, String> {
    let mut last = String::new();
    for name in ["libopus.so.0", "libopus.so", "libopus.0.dylib"] {
        // SAFETY: libopus runs no initialisation code with side effects when loaded.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => {
                // SAFETY: the types match libopus's prototypes (opus.h, opus 1.x).
                unsafe {
                    macro_rules! sym {
                        ($n:literal) => {
                            *lib.get($n).map_err(|e| format!("libopus: {e}"))?
                        };
                    }
                    return Ok(Lib {
                        encoder_create: sym!(b"opus_encoder_create\0"),
                        encode_float: sym!(b"opus_encode_float\0"),
                        encoder_ctl: sym!(b"opus_encoder_ctl\0"),
                        encoder_destroy: sym!(b"opus_encoder_destroy\0"),
                        decoder_create: sym!(b"opus_decoder_create\0"),
                        decode_float: sym!(b"opus_decode_float\0"),
                        decoder_destroy: sym!(b"opus_decoder_destroy\0"),
                        _lib: lib,
                    });
                }
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "libopus is not installed (apt install libopus0): {last}"
    ))
}

fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// Whether libopus can be loaded here (and why not).
pub fn available() -> Result<(), TranscodeError> {
    lib().map(|_| ()).map_err(TranscodeError::Unavailable)
}

/// An Opus encoder at 48 kHz.
pub struct Encoder {
    lib: &'static Lib,
    st: *mut c_void,
    channels: usize,
}

// SAFETY: an encoder state is used by one thread at a time (&mut self); libopus keeps no
// thread-local state.
unsafe impl Send for Encoder {}

impl Encoder {
    pub fn new(channels: u8, bitrate: u32) -> Result<Encoder, TranscodeError> {
        let lib = lib().map_err(TranscodeError::Unavailable)?;
        if !(1..=2).contains(&channels) {
            return Err(TranscodeError::Unsupported(format!(
                "Opus takes 1 or 2 channels, not {channels}"
            )));
        }
        let mut err: c_int = 0;
        // SAFETY: valid arguments; the result is checked.
        let st = unsafe {
            (lib.encoder_create)(48_000, c_int::from(channels), APPLICATION_AUDIO, &mut err)
        };
        if st.is_null() || err != OK {
            return Err(TranscodeError::Codec(format!(
                "opus_encoder_create failed ({err})"
            )));
        }
        let enc = Encoder {
            lib,
            st,
            channels: usize::from(channels),
        };
        let bitrate = bitrate.clamp(6_000, 510_000) as i32;
        // SAFETY: OPUS_SET_BITRATE takes one opus_int32.
        let r = unsafe { (lib.encoder_ctl)(st, SET_BITRATE_REQUEST, bitrate) };
        if r != OK {
            return Err(TranscodeError::Codec(format!(
                "OPUS_SET_BITRATE({bitrate}) failed ({r})"
            )));
        }
        // SAFETY: OPUS_SET_COMPLEXITY takes one opus_int32.
        let r = unsafe { (lib.encoder_ctl)(st, SET_COMPLEXITY_REQUEST, COMPLEXITY) };
        if r != OK {
            return Err(TranscodeError::Codec(format!(
                "OPUS_SET_COMPLEXITY({COMPLEXITY}) failed ({r})"
            )));
        }
        Ok(enc)
    }

    /// Samples (per channel, at 48 kHz) the encoder delays its output by.
    pub fn lookahead(&self) -> u32 {
        let mut v: i32 = 0;
        // SAFETY: OPUS_GET_LOOKAHEAD takes one opus_int32 pointer.
        let r =
            unsafe { (self.lib.encoder_ctl)(self.st, GET_LOOKAHEAD_REQUEST, &mut v as *mut i32) };
        if r == OK {
            v.max(0) as u32
        } else {
            0
        }
    }

    /// Encodes one frame of interleaved samples (2.5 to 60 ms at 48 kHz).
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, TranscodeError> {
        let frame = pcm.len() / self.channels;
        if frame == 0 || frame * self.channels != pcm.len() {
            return Err(TranscodeError::Codec("a partial Opus frame".into()));
        }
        let mut out = vec![0u8; 1500];
        // SAFETY: `pcm` holds `frame` samples per channel, `out` its stated length.
        let n = unsafe {
            (self.lib.encode_float)(
                self.st,
                pcm.as_ptr(),
                frame as c_int,
                out.as_mut_ptr(),
                out.len() as i32,
            )
        };
        if n < 0 {
            return Err(TranscodeError::Codec(format!(
                "opus_encode_float failed ({n})"
            )));
        }
        out.truncate(n as usize);
        Ok(out)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: made by opus_encoder_create, destroyed once.
        unsafe { (self.lib.encoder_destroy)(self.st) }
    }
}

/// Samples per channel of the longest Opus packet (120 ms at 48 kHz).
const MAX_DECODED: usize = 5760;

/// An Opus decoder at 48 kHz.
pub struct Decoder {
    lib: &'static Lib,
    st: *mut c_void,
    channels: usize,
    /// Room for the longest packet (120 ms), kept between calls.
    out: Vec<f32>,
}

// SAFETY: as for `Encoder`.
unsafe impl Send for Decoder {}

impl Decoder {
    pub fn new(channels: u8) -> Result<Decoder, TranscodeError> {
        let lib = lib().map_err(TranscodeError::Unavailable)?;
        if !(1..=2).contains(&channels) {
            return Err(TranscodeError::Unsupported(format!(
                "Opus decodes to 1 or 2 channels, not {channels}"
            )));
        }
        let mut err: c_int = 0;
        // SAFETY: valid arguments; the result is checked.
        let st = unsafe { (lib.decoder_create)(48_000, c_int::from(channels), &mut err) };
        if st.is_null() || err != OK {
            return Err(TranscodeError::Codec(format!(
                "opus_decoder_create failed ({err})"
            )));
        }
        Ok(Decoder {
            lib,
            st,
            channels: usize::from(channels),
            out: vec![0f32; MAX_DECODED * usize::from(channels)],
        })
    }

    /// Decodes one packet into interleaved samples (at most 120 ms).
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[f32], TranscodeError> {
        // SAFETY: `out` holds MAX_DECODED samples per channel.
        let n = unsafe {
            (self.lib.decode_float)(
                self.st,
                packet.as_ptr(),
                packet.len() as i32,
                self.out.as_mut_ptr(),
                MAX_DECODED as c_int,
                0,
            )
        };
        if n < 0 {
            return Err(TranscodeError::Codec(format!(
                "opus_decode_float failed ({n})"
            )));
        }
        Ok(&self.out[..n as usize * self.channels])
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: made by opus_decoder_create, destroyed once.
        unsafe { (self.lib.decoder_destroy)(self.st) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_round_trips() {
        let mut enc = Encoder::new(1, 64_000).expect("libopus");
        let mut dec = Decoder::new(1).expect("libopus");
        let mut energy = 0.0f32;
        for i in 0..50 {
            let pcm: Vec<f32> = (0..960)
                .map(|n| {
                    ((i * 960 + n) as f32 * 2.0 * std::f32::consts::PI * 1000.0 / 48_000.0).sin()
                        * 0.5
                })
                .collect();
            let pkt = enc.encode(&pcm).expect("encode");
            assert!(!pkt.is_empty() && pkt.len() < 400);
            let out = dec.decode(&pkt).expect("decode");
            assert_eq!(out.len(), 960);
            if i > 10 {
                energy += out.iter().map(|s| s * s).sum::<f32>() / 960.0;
            }
        }
        // A 0.5 sine has a mean square of 0.125.
        let ms = energy / 39.0;
        assert!((0.09..0.16).contains(&ms), "mean square {ms}");
        assert!(enc.lookahead() > 0 && enc.lookahead() < 1000);
    }
}
