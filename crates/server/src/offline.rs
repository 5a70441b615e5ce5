//! The offline stream of `alwaysAvailable` paths: while nobody publishes, readers get a stream
//! of the path's tracks (generated from `alwaysAvailableTracks`, or `alwaysAvailableFile` on a
//! loop) in real time; a publisher or source takes over from it and it comes back when they
//! leave, in the same stream, so readers never reconnect (the registry continues the stream,
//! as after a publisher's blip: timestamps carry on, each side starts on a keyframe).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tidegate_core::{
    Bytes, CodecParams, CoreError, Frame, G711Law, OfflineTrack, PathConf, PathManager,
    SessionInfo, StreamDesc, Track, TrackId,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest `alwaysAvailableFile` held in memory.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// The generated picture: MediaMTX's offline segment is 720p too.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 25;

/// What an offline stream plays.
pub struct OfflineMedia {
    pub desc: StreamDesc,
    tracks: Vec<Source>,
}

/// One track's frames: frame `n` of an endless sequence.
enum Source {
    H264 {
        id: TrackId,
        pic: Box<tidegate_codec::synth::OfflineH264>,
    },
    H265 {
        id: TrackId,
        pic: Box<tidegate_codec::synth::hevc::OfflineH265>,
    },
    /// A key frame a second (temporal unit without its delimiter), then copies of it.
    Av1 {
        id: TrackId,
        key: Bytes,
        repeat: Bytes,
        fps: u32,
    },
    /// A key frame a second, then frames that show it again.
    Vp9 {
        id: TrackId,
        pic: Box<tidegate_codec::synth::vp9::OfflineVp9>,
    },
    /// The same audio frame every `duration` ticks.
    Audio {
        id: TrackId,
        duration: i64,
        data: Bytes,
    },
    /// A file's track on a loop of `period` ticks.
    File {
        id: TrackId,
        frames: Vec<Frame>,
        period: i64,
    },
}

/// Frame `n` (dts, pts, keyframe, data) of generated video at `fps` on a 90 kHz clock: a key
/// frame every second (`key` gets the second's number), repeats of it between (`repeat` gets
/// the picture's place in the second, 1, 2, …).
fn gop(
    fps: u32,
    n: u64,
    key: impl FnOnce(u64) -> Bytes,
    repeat: impl FnOnce(u32) -> Bytes,
) -> (i64, i64, bool, Bytes) {
    let fps = u64::from(fps.max(1));
    let dts = (n * 90_000 / fps) as i64;
    let at = (n % fps) as u32;
    let data = if at == 0 { key(n / fps) } else { repeat(at) };
    (dts, dts, at == 0, data)
}

impl Source {
    /// Frame `n`: (dts, pts, keyframe, data).
    fn frame(&self, n: u64) -> (i64, i64, bool, Bytes) {
        match self {
            Source::H264 { pic, .. } => gop(
                pic.fps,
                n,
                |second| {
                    let nals: [&[u8]; 3] = [&pic.sps, &pic.pps, pic.idr(second)];
                    tidegate_codec::nal::to_length_prefixed(nals)
                },
                |at| {
                    let p = pic.repeat(at);
                    tidegate_codec::nal::to_length_prefixed([p.as_slice()])
                },
            ),
            Source::H265 { pic, .. } => gop(
                pic.fps,
                n,
                |_| {
                    let nals: [&[u8]; 4] = [&pic.vps, &pic.sps, &pic.pps, pic.idr()];
                    tidegate_codec::nal::to_length_prefixed(nals)
                },
                |at| {
                    let p = pic.repeat(at);
                    tidegate_codec::nal::to_length_prefixed([p.as_slice()])
                },
            ),
            Source::Av1 {
                key, repeat, fps, ..
            } => gop(*fps, n, |_| key.clone(), |_| repeat.clone()),
            Source::Vp9 { pic, .. } => gop(
                pic.fps,
                n,
                |_| Bytes::copy_from_slice(pic.key()),
                |_| Bytes::from_static(pic.repeat()),
            ),
            Source::Audio { duration, data, .. } => {
                let dts = n as i64 * duration;
                (dts, dts, true, data.clone())
            }
            Source::File { frames, period, .. } => {
                let len = frames.len().max(1) as u64;
                let f = &frames[(n % len) as usize];
                let base = (n / len) as i64 * period;
                (f.dts + base, f.pts + base, f.keyframe, f.data.clone())
            }
        }
    }

    fn id(&self) -> TrackId {
        match self {
            Source::H264 { id, .. }
            | Source::H265 { id, .. }
            | Source::Vp9 { id, .. }
            | Source::Av1 { id, .. }
            | Source::Audio { id, .. }
            | Source::File { id, .. } => *id,
        }
    }
}

impl OfflineMedia {
    /// Generated tracks: H.264, H.265 or AV1 "STREAM IS OFFLINE" on black, VP9 black, silence
    /// for the audio codecs.
    pub fn generated(tracks: &[OfflineTrack]) -> Result<OfflineMedia, String> {
        let mut desc = StreamDesc { tracks: Vec::new() };
        let mut sources = Vec::new();
        for (i, t) in tracks.iter().enumerate() {
            let id = i as TrackId;
            let (rate, ch) = (t.sample_rate, t.channel_count);
            let (params, clock, source) = match t.codec.as_str() {
                "H264" => {
                    let pic = tidegate_codec::synth::OfflineH264::new(WIDTH, HEIGHT, FPS);
                    let params = CodecParams::H264 {
                        sps: Bytes::copy_from_slice(&pic.sps),
                        pps: Bytes::copy_from_slice(&pic.pps),
                    };
                    (
                        params,
                        90_000,
                        Source::H264 {
                            id,
                            pic: Box::new(pic),
                        },
                    )
                }
                "H265" => {
                    let pic = tidegate_codec::synth::hevc::OfflineH265::new(WIDTH, HEIGHT, FPS);
                    let params = CodecParams::H265 {
                        vps: Bytes::copy_from_slice(&pic.vps),
                        sps: Bytes::copy_from_slice(&pic.sps),
                        pps: Bytes::copy_from_slice(&pic.pps),
                    };
                    (
                        params,
                        90_000,
                        Source::H265 {
                            id,
                            pic: Box::new(pic),
                        },
                    )
                }
                "AV1" => {
                    let pic = tidegate_codec::synth::av1::OfflineAv1::new(WIDTH, HEIGHT, FPS);
                    // Frames carry their OBUs without the temporal delimiter, as from other
                    // sources (RTP and MP4 leave it out).
                    let units = |tu: &[u8]| -> Bytes {
                        let (mut out, mut rest) = (Vec::with_capacity(tu.len()), tu);
                        while let Ok(o) = tidegate_codec::av1::parse_obu(rest) {
                            if o.obu_type != tidegate_codec::av1::OBU_TEMPORAL_DELIMITER {
                                out.extend_from_slice(&rest[..o.len]);
                            }
                            rest = &rest[o.len..];
                            if rest.is_empty() {
                                break;
                            }
                        }
                        Bytes::from(out)
                    };
                    (
                        CodecParams::Av1 {
                            sequence_header: Bytes::copy_from_slice(&pic.sequence_header),
                        },
                        90_000,
                        Source::Av1 {
                            id,
                            key: units(pic.key()),
                            repeat: units(&pic.repeat(1)),
                            fps: pic.fps,
                        },
                    )
                }
                "VP9" => {
                    let pic = tidegate_codec::synth::vp9::OfflineVp9::new(WIDTH, HEIGHT, FPS);
                    (
                        CodecParams::Vp9,
                        90_000,
                        Source::Vp9 {
                            id,
                            pic: Box::new(pic),
                        },
                    )
                }
                "MPEG4Audio" => {
                    if !(1..=2).contains(&ch) {
                        return Err(format!(
                            "the offline MPEG4Audio track is generated mono or stereo, not {ch} channels"
                        ));
                    }
                    let config = tidegate_codec::aac::AudioSpecificConfig {
                        object_type: 2,
                        sample_rate: rate,
                        channels: ch,
                    }
                    .to_bytes();
                    tidegate_codec::aac::AudioSpecificConfig::parse(&config)
                        .ok()
                        .filter(|c| c.sample_rate == rate)
                        .ok_or_else(|| format!("AAC has no sample rate {rate}"))?;
                    let data = Bytes::from(tidegate_codec::synth::aac_silence(ch));
                    (
                        CodecParams::Aac { config },
                        rate,
                        Source::Audio {
                            id,
                            duration: 1024,
                            data,
                        },
                    )
                }
                "Opus" => {
                    let ch = ch.clamp(1, 2);
                    let data = Bytes::from(tidegate_codec::synth::opus_silence(ch));
                    (
                        CodecParams::Opus { channels: ch },
                        48_000,
                        Source::Audio {
                            id,
                            duration: 960,
                            data,
                        },
                    )
                }
                "G711" | "LPCM" => {
                    // 20 ms frames.
                    if rate % 50 != 0 {
                        return Err(format!(
                            "the offline {} track needs a sample rate that is a multiple of 50, not {rate}",
                            t.codec
                        ));
                    }
                    let samples = (rate / 50) as usize * usize::from(ch);
                    let (params, data) = if t.codec == "G711" {
                        (
                            CodecParams::G711 {
                                law: if t.mu_law {
                                    G711Law::MuLaw
                                } else {
                                    G711Law::ALaw
                                },
                                sample_rate: rate,
                                channels: ch,
                            },
                            tidegate_codec::synth::g711_silence(t.mu_law, samples),
                        )
                    } else {
                        (
                            CodecParams::Lpcm {
                                bits: 16,
                                sample_rate: rate,
                                channels: ch,
                            },
                            vec![0; samples * 2],
                        )
                    };
                    (
                        params,
                        rate,
                        Source::Audio {
                            id,
                            duration: i64::from(rate / 50),
                            data: Bytes::from(data),
                        },
                    )
                }
                other => {
                    return Err(format!(
                    "Tidegate does not generate offline {other} video: use H264, H265, VP9 or AV1 in \
                         alwaysAvailableTracks, or an alwaysAvailableFile with the {other} track"
                ))
                }
            };
            desc.tracks.push(Track {
                id,
                params,
                clock_rate: clock,
            });
            sources.push(source);
        }
        Ok(OfflineMedia {
            desc,
            tracks: sources,
        })
    }

    /// An MP4 file (progressive or fragmented) held in memory and played on a loop; its
    /// tracks are the offline stream's.
    pub fn load(path: &str) -> Result<OfflineMedia, String> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let mut data = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("{path}: {e}"))?;
        if data.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "{path} is larger than {} MiB",
                MAX_FILE_BYTES >> 20
            ));
        }
        let data = Bytes::from(data);
        let (tracks, frames) =
            tidegate_record::demux::file_frames(&data).map_err(|e| format!("{path}: {e}"))?;
        if let Some(t) = tracks.iter().find(|t| t.track.is_none()) {
            return Err(format!(
                "{path}: track {} ({}) has a codec Tidegate does not carry",
                t.id,
                String::from_utf8_lossy(&t.entry)
            ));
        }
        let desc = tidegate_record::demux::stream_desc(&tracks);
        if desc.tracks.is_empty() {
            return Err(format!("{path}: the file has no track"));
        }
        // Per track, in decode order, video from its first keyframe; the loop lasts as long
        // as the longest track (µs).
        let mut per: Vec<Vec<Frame>> = Vec::new();
        let mut period_us = 0i64;
        for t in &desc.tracks {
            let mut fs: Vec<Frame> = frames.iter().filter(|f| f.track == t.id).cloned().collect();
            fs.sort_by_key(|f| f.dts);
            if let Some(k) = fs.iter().position(|f| f.keyframe) {
                fs.drain(..k);
            } else {
                fs.clear();
            }
            if fs.is_empty() {
                return Err(format!("{path}: track {} has no frame to start on", t.id));
            }
            let first = fs[0].dts;
            for f in &mut fs {
                f.dts -= first;
                f.pts -= first;
            }
            // The last frame lasts as long as the one before it.
            let n = fs.len();
            let last = if n >= 2 {
                2 * fs[n - 1].dts - fs[n - 2].dts
            } else {
                i64::from(t.clock_rate) / 25
            };
            period_us = period_us.max(tidegate_core::rescale(last, t.clock_rate, 1_000_000));
            per.push(fs);
        }
        if period_us <= 0 {
            return Err(format!("{path}: the file lasts no time"));
        }
        let tracks = desc
            .tracks
            .iter()
            .zip(per)
            .map(|(t, frames)| Source::File {
                id: t.id,
                frames,
                period: tidegate_core::rescale(period_us, 1_000_000, t.clock_rate).max(1),
            })
            .collect();
        Ok(OfflineMedia { desc, tracks })
    }

    /// The media a path's configuration asks for.
    pub fn for_path(conf: &PathConf) -> Result<OfflineMedia, String> {
        if conf.always_available_file.is_empty() {
            OfflineMedia::generated(&conf.always_available_tracks)
        } else {
            OfflineMedia::load(&conf.always_available_file)
        }
    }

    /// Writes the frames into `stream` in real time until `stop`.
    async fn play(&self, stream: &tidegate_core::Stream, stop: &CancellationToken) {
        let start = tokio::time::Instant::now();
        let clocks: Vec<u32> = self
            .tracks
            .iter()
            .map(|s| self.desc.track(s.id()).map_or(90_000, |t| t.clock_rate))
            .collect();
        let mut next = vec![0u64; self.tracks.len()];
        loop {
            // The track whose next frame is due first.
            let Some((i, due_us)) = self
                .tracks
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let (dts, ..) = s.frame(next[i]);
                    (i, tidegate_core::rescale(dts, clocks[i], 1_000_000))
                })
                .min_by_key(|(_, d)| *d)
            else {
                return;
            };
            let due = start + std::time::Duration::from_micros(due_us.max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.cancelled() => return,
            }
            let (dts, pts, keyframe, data) = self.tracks[i].frame(next[i]);
            next[i] += 1;
            stream.write(Frame {
                track: self.tracks[i].id(),
                pts,
                dts,
                keyframe,
                data,
                received: Instant::now(),
                params: None,
            });
        }
    }
}

/// The running offline streams, by path.
#[derive(Default)]
pub struct Offline {
    running: Mutex<HashMap<String, (PathConf, CancellationToken)>>,
}

impl Offline {
    /// Starts the offline streams of the `alwaysAvailable` paths in `confs` and stops those
    /// no longer configured (or configured differently).
    pub fn apply(
        &self,
        confs: &[PathConf],
        paths: &PathManager,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let wanted: HashMap<&str, &PathConf> = confs
            .iter()
            .filter(|c| c.always_available)
            .map(|c| (c.name.as_str(), c))
            .collect();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|name, (conf, cancel)| {
            let keep = wanted.get(name.as_str()).is_some_and(|c| *c == conf);
            if !keep {
                cancel.cancel();
            }
            keep
        });
        for (name, conf) in wanted {
            if running.contains_key(name) {
                continue;
            }
            let media = match OfflineMedia::for_path(conf) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    // The configuration was checked when loaded: only a file that changed since.
                    tracing::error!(path = name, "the offline stream cannot start: {e}");
                    continue;
                }
            };
            let cancel = shutdown.child_token();
            tasks.spawn(run(name.to_string(), media, paths.clone(), cancel.clone()));
            running.insert(name.to_string(), (conf.clone(), cancel));
        }
    }
}

/// Plays the offline stream on `path` whenever nobody else publishes there.
async fn run(
    path: String,
    media: Arc<OfflineMedia>,
    paths: PathManager,
    cancel: CancellationToken,
) {
    loop {
        let released = paths.publisher_released();
        tokio::pin!(released);
        released.as_mut().enable();
        let session = SessionInfo::new(paths.new_session_id(), "offline", None);
        match paths.publish_offline(&path, session) {
            Ok(mut publisher) => {
                let stream = publisher.start(media.desc.clone());
                let stop = cancel.child_token();
                let kicked = publisher.kicked();
                tokio::select! {
                    _ = async {
                        media.play(&stream, &stop).await;
                        // Nothing more to play (no track): hold the path until taken over.
                        kicked.cancelled().await
                    } => {}
                    _ = kicked.cancelled() => {}
                    _ = cancel.cancelled() => return,
                }
                drop(publisher);
                continue;
            }
            Err(CoreError::Busy(_)) => {}
            Err(e) => {
                tracing::error!(path, "the offline stream cannot start: {e}");
            }
        }
        tokio::select! {
            _ = &mut released => {}
            _ = cancel.cancelled() => return,
        }
    }
}
