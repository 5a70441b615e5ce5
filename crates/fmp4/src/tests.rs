use super::*;
use tidegate_core::Track;

/// Walks a box sequence, returning (type, body) pairs; panics on a bad size.
fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let size = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        assert!(size >= 8 && size <= data.len(), "bad box size {size}");
        out.push((data[4..8].try_into().unwrap(), &data[8..size]));
        data = &data[size..];
    }
    out
}

fn child<'a>(body: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
    boxes(body)
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(kind)))
}

fn aac_track() -> InitTrack {
    let t = Track {
        id: 2,
        params: CodecParams::Aac {
            config: Bytes::from_static(&[0x11, 0x90]),
        },
        clock_rate: 48_000,
    };
    InitTrack::from_params(2, &t.params, None).unwrap()
}

#[test]
fn init_segment_has_ftyp_moov_and_one_trak_per_track() {
    let aac = aac_track();
    assert_eq!((aac.timescale, aac.codec.as_str()), (48_000, "mp4a.40.2"));
    let opus_t = Track {
        id: 3,
        params: CodecParams::Opus { channels: 2 },
        clock_rate: 48_000,
    };
    let opus = InitTrack::from_params(3, &opus_t.params, None).unwrap();
    let init = init_segment(&[aac, opus]);
    let top = boxes(&init);
    assert_eq!(
        top.iter().map(|b| &b.0).collect::<Vec<_>>(),
        [b"ftyp", b"moov"]
    );
    let moov = top[1].1;
    let traks: Vec<_> = boxes(moov)
        .into_iter()
        .filter(|b| &b.0 == b"trak")
        .collect();
    assert_eq!(traks.len(), 2);
    let stsd = child(
        child(child(child(traks[0].1, b"mdia"), b"minf"), b"stbl"),
        b"stsd",
    );
    let entries = boxes(&stsd[8..]);
    assert_eq!(&entries[0].0, b"mp4a");
    let mvex = child(moov, b"mvex");
    assert_eq!(boxes(mvex).len(), 2);
}

#[test]
fn unsupported_codecs_are_refused() {
    let t = Track {
        id: 1,
        params: CodecParams::Mp3,
        clock_rate: 44_100,
    };
    assert!(matches!(
        InitTrack::from_params(1, &t.params, None),
        Err(Fmp4Error::Unsupported(_))
    ));
    let vp9 = Track {
        id: 1,
        params: CodecParams::Vp9,
        clock_rate: 90_000,
    };
    assert_eq!(
        InitTrack::from_params(1, &vp9.params, None),
        Err(Fmp4Error::NeedKeyFrame)
    );
}

#[test]
fn fragment_offsets_point_at_each_runs_samples() {
    let v = [
        Sample {
            duration: 3000,
            composition_offset: 3000,
            keyframe: true,
            data: Bytes::from_static(b"AAAA"),
        },
        Sample {
            duration: 3000,
            composition_offset: -100,
            keyframe: false,
            data: Bytes::from_static(b"BB"),
        },
    ];
    let a = [Sample {
        duration: 1024,
        composition_offset: 0,
        keyframe: true,
        data: Bytes::from_static(b"ccc"),
    }];
    let frag = fragment(
        7,
        &[
            TrackRun {
                track_id: 1,
                base_decode_time: 1 << 40,
                samples: &v,
            },
            TrackRun {
                track_id: 2,
                base_decode_time: 0,
                samples: &[],
            },
            TrackRun {
                track_id: 3,
                base_decode_time: 48_000,
                samples: &a,
            },
        ],
    );
    let top = boxes(&frag);
    assert_eq!(
        top.iter().map(|b| &b.0).collect::<Vec<_>>(),
        [b"moof", b"mdat"]
    );
    assert_eq!(top[1].1, b"AAAABBccc");
    let moof_len = 8 + top[0].1.len();
    let trafs: Vec<_> = boxes(top[0].1)
        .into_iter()
        .filter(|b| &b.0 == b"traf")
        .collect();
    assert_eq!(trafs.len(), 2, "the empty run is left out");
    let tfdt = child(trafs[0].1, b"tfdt");
    assert_eq!(u64::from_be_bytes(tfdt[4..12].try_into().unwrap()), 1 << 40);
    for (traf, expect) in trafs.iter().zip([&b"AAAA"[..], b"ccc"]) {
        let trun = child(traf.1, b"trun");
        assert_eq!(trun[0], 1, "version 1: signed composition offsets");
        let off = i32::from_be_bytes(trun[8..12].try_into().unwrap()) as usize;
        assert_eq!(&frag[off..off + expect.len()], expect);
    }
    assert!(moof_len < frag.len());
    assert!(fragment(1, &[]).is_empty());
}

#[test]
fn frame_headers_of_the_recording_codecs() {
    // VP8 key frame: frame tag, start code, 640x360.
    let vp8 = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
    assert_eq!(crate::vp8_size(&vp8), Some((640, 360)));
    let mut inter = vp8;
    inter[0] |= 1;
    assert_eq!(crate::vp8_size(&inter), None);
    // MPEG-1 Layer III, 44.1 kHz, joint stereo; MPEG-2 at 24 kHz mono.
    assert_eq!(
        crate::mp3_header(&[0xff, 0xfb, 0x90, 0x44]),
        Some((44_100, 2))
    );
    assert_eq!(
        crate::mp3_header(&[0xff, 0xf3, 0x84, 0xc4]),
        Some((24_000, 1))
    );
    assert_eq!(crate::mp3_header(&[0x00, 0xfb, 0x90, 0x44]), None);
    // AC-3 48 kHz 5.1: fscod 0, bsid 8, acmod 7, lfe on.
    // fscod(2) bsid(5) bsmod(3) acmod(3) lfeon(1) bit_rate_code(5) reserved(5).
    assert_eq!(super::dac3(48_000, 6), [0x10, 0x3d, 0xe0]);
    let init = crate::InitTrack::from_track(
        1,
        &tidegate_core::CodecParams::G711 {
            law: tidegate_core::G711Law::ALaw,
            sample_rate: 8000,
            channels: 1,
        },
        8000,
        None,
    )
    .unwrap();
    assert_eq!((init.timescale, init.codec.as_str()), (8000, "alaw"));
    let seg = crate::init_segment(&[init]);
    assert!(seg.windows(4).any(|w| w == b"alaw"));
}
