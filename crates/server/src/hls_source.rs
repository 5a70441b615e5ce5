//! `source: http(s)://…/index.m3u8`: an HLS client that publishes the path from another
//! server's HLS (Tidegate's, MediaMTX's, nginx's, a CDN's).
//!
//! A multivariant playlist is followed to its variant of highest `BANDWIDTH`, and to that
//! variant's audio rendition when its audio is apart (`AUDIO="group"`, an
//! `EXT-X-MEDIA:TYPE=AUDIO` with a `URI`: the group's default one): both media playlists are
//! followed at once, and their tracks make one stream, frames merged in decode order. Segments are
//! MPEG-TS (demuxed as an SRT publish is) or fMP4 with an `EXT-X-MAP` init section. When the
//! playlist has LL-HLS parts and the server can block playlist reloads, the client starts at
//! the last independent part and follows part by part with blocking reloads (`_HLS_msn`,
//! `_HLS_part`), so the path runs a part behind the origin; otherwise it starts at the last
//! segment and reloads the playlist every half target duration. One HTTP/1.1 connection per
//! origin is kept alive. Playlists are limited to 1 MiB and segments to 64 MiB.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tidegate_core::relay::{with_backoff, RelayStatus};
use tidegate_core::{
    Frame, PathManager, Publisher, SessionInfo, Stream, StreamDesc, Track, TrackId,
};
use tidegate_hls::follow::{best_variant, parse_media, step, MediaPlaylist, Step};

/// A media playlist, its error as the message the path's source status shows.
fn media(text: &str) -> Result<MediaPlaylist, String> {
    parse_media(text).map_err(|e| e.to_string())
}
use tidegate_mpegts::demux::Demuxer;
use tidegate_mpegts::frames::{Output, TsToFrames};
use tidegate_record::demux::{fragment_frames, parse_init, stream_desc, InitTrack};
use tokio_util::sync::CancellationToken;

const MAX_PLAYLIST: usize = 1 << 20;
const MAX_MEDIA: usize = 64 << 20;
/// A request (other than a blocking reload) must be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One kept-alive HTTP/1.1 connection to an origin (reopened when it closes or the origin
/// changes).
struct Client {
    fingerprint: String,
    conn: Option<(String, http1::SendRequest<Empty<Bytes>>)>,
}

impl Client {
    async fn get(&mut self, url: &url::Url, limit: usize, wait: Duration) -> Result<Bytes, String> {
        let host = url.host_str().ok_or("the URL has no host")?.to_string();
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let origin = format!("{}://{authority}", url.scheme());
        let reuse = matches!(&self.conn, Some((o, s)) if *o == origin && !s.is_closed());
        if !reuse {
            self.conn = None;
            let sender = match url.scheme() {
                "http" => {
                    let tcp = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        tokio::net::TcpStream::connect((host.as_str(), port)),
                    )
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| format!("connect: {e}"))?;
                    let _ = tcp.set_nodelay(true);
                    handshake(tidegate_core::dump::tcp_client(tcp, "hls_source_conn")).await?
                }
                "https" => {
                    let tls = tidegate_core::tls::connect(
                        &host,
                        port,
                        &self.fingerprint,
                        REQUEST_TIMEOUT,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    handshake(tidegate_core::dump::tls_client(tls, "hls_source_conn")).await?
                }
                other => return Err(format!("unsupported scheme {other}")),
            };
            self.conn = Some((origin, sender));
        }
        let Some((_, sender)) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        let mut target = url.path().to_string();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let mut req = hyper::Request::get(target)
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::USER_AGENT, "Tidegate");
        if !url.username().is_empty() {
            use base64::Engine;
            let user = urlencoding_decode(url.username());
            let pass = urlencoding_decode(url.password().unwrap_or(""));
            let cred = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            req = req.header(hyper::header::AUTHORIZATION, format!("Basic {cred}"));
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let result = tokio::time::timeout(wait, async {
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = res.status();
            let body = Limited::new(res.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("reading {url}: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{url}: HTTP {status}"));
            }
            Ok(body)
        })
        .await;
        match result {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(format!("{url}: no answer within {wait:?}"))
            }
        }
    }
}

fn urlencoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("a={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn handshake<S>(io: S) -> Result<http1::SendRequest<Empty<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// What one followed media playlist yields to the path.
enum Out {
    /// Its tracks (again when they change).
    Tracks(StreamDesc),
    Frames(Vec<Frame>),
    /// PES packets lost to transport errors (MPEG-TS), counted on the stream.
    Dropped(u64),
    /// A segment's `EXT-X-PROGRAM-DATE-TIME`: the absolute time of a presentation time, per
    /// track (`useAbsoluteTimestamp`).
    Absolute(Vec<(TrackId, i64, SystemTime)>),
}

/// What a fetched piece of media goes into.
enum Demux {
    Ts {
        demux: Box<Demuxer>,
        frames: Box<TsToFrames>,
        dropped: u64,
    },
    Fmp4 {
        map: String,
        tracks: Vec<InitTrack>,
        desc: StreamDesc,
    },
    None,
}

/// One media playlist followed segment by segment (or part by part): the variant, or its
/// audio rendition when that is apart.
struct Follower {
    client: Client,
    media_url: url::Url,
    playlist: MediaPlaylist,
    demux: Demux,
    what: &'static str,
}

/// Pulls `url` into `path` until `cancel`, reconnecting with backoff.
pub async fn pull(
    url: String,
    fingerprint: String,
    paths: PathManager,
    path: String,
    status: Arc<RelayStatus>,
    cancel: CancellationToken,
) {
    with_backoff("source", &path, &status, &cancel, || {
        run(&url, &fingerprint, &paths, &path, &status)
    })
    .await;
}

async fn run(
    url: &str,
    fingerprint: &str,
    paths: &PathManager,
    path: &str,
    status: &Arc<RelayStatus>,
) -> Result<(), String> {
    let mut client = Client {
        fingerprint: fingerprint.to_string(),
        conn: None,
    };
    status.set_state("connecting");
    let top = url::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
    let text = fetch_text(&mut client, &top, REQUEST_TIMEOUT).await?;
    let mut followers = Vec::new();
    match best_variant(&text) {
        None => followers.push(Follower::new(client, top, media(&text)?, "variant")),
        Some(v) => {
            let media_url = top
                .join(&v.uri)
                .map_err(|e| format!("variant URI {}: {e}", v.uri))?;
            let playlist = media(&fetch_text(&mut client, &media_url, REQUEST_TIMEOUT).await?)?;
            followers.push(Follower::new(client, media_url, playlist, "variant"));
            if let Some(a) = v.audio {
                let mut client = Client {
                    fingerprint: fingerprint.to_string(),
                    conn: None,
                };
                let audio_url = top
                    .join(&a)
                    .map_err(|e| format!("audio rendition URI {a}: {e}"))?;
                let playlist = media(&fetch_text(&mut client, &audio_url, REQUEST_TIMEOUT).await?)?;
                followers.push(Follower::new(
                    client,
                    audio_url,
                    playlist,
                    "audio rendition",
                ));
            }
        }
    }
    let mut publisher = paths
        .publish_source(
            path,
            SessionInfo {
                id: paths.new_session_id(),
                kind: "hlsSource",
                remote: None,
                query: String::new(),
            },
        )
        .map_err(|e| e.to_string())?;
    let kick = publisher.kicked();
    status.set_state("running");
    for f in &followers {
        tracing::info!(
            path,
            url = status.url,
            low_latency = f.playlist.low_latency(),
            "[HLS source] pulling the {} {}",
            f.what,
            f.media_url
        );
    }
    let n = followers.len();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<Out, String>)>(16);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, f) in followers.into_iter().enumerate() {
        let tx = tx.clone();
        let status = status.clone();
        tasks.spawn(async move {
            let e = f.follow(i, &tx, &status).await;
            let _ = tx.send((i, Err(e))).await;
        });
    }
    drop(tx);
    let mut merge = Merge::new(n, publisher.conf().use_absolute_timestamp);
    loop {
        let (i, out) = tokio::select! {
            m = rx.recv() => m.ok_or("the followers stopped")?,
            _ = kick.cancelled() => return Err("the path's publisher was replaced".into()),
        };
        merge.take(i, out?, &mut publisher);
    }
}

/// Joins the followed playlists into one stream: the tracks of all of them (an audio
/// rendition's only when the variant has no audio of its own), and their frames in decode
/// order (a playlist's frames wait, within a bound, for the others' to catch up).
struct Merge {
    descs: Vec<Option<StreamDesc>>,
    /// (playlist, its track id) -> the path's track id.
    ids: HashMap<(usize, TrackId), TrackId>,
    queues: Vec<VecDeque<Frame>>,
    stream: Option<Arc<Stream>>,
    clock: HashMap<(usize, TrackId), u32>,
    /// `useAbsoluteTimestamp`: the playlists' dates are the frames' absolute times.
    absolute: bool,
    /// Dates given before the stream started.
    pending: Vec<(usize, TrackId, i64, SystemTime)>,
}

/// Frames a playlist may hold back waiting for the others (~10 s of video and audio).
const MERGE_BOUND: usize = 1000;

impl Merge {
    fn new(n: usize, absolute: bool) -> Merge {
        Merge {
            descs: vec![None; n],
            ids: HashMap::new(),
            queues: (0..n).map(|_| VecDeque::new()).collect(),
            stream: None,
            clock: HashMap::new(),
            absolute,
            pending: Vec::new(),
        }
    }

    fn set_absolute(&mut self) {
        let Some(stream) = &self.stream else { return };
        for (i, t, pts, at) in self.pending.drain(..) {
            if let Some(id) = self.ids.get(&(i, t)) {
                stream.set_absolute_time(*id, pts, at);
            }
        }
    }

    fn take(&mut self, i: usize, out: Out, publisher: &mut Publisher) {
        match out {
            Out::Tracks(desc) => {
                if self.descs[i].as_ref() == Some(&desc) {
                    return;
                }
                self.descs[i] = Some(desc);
                if self.descs.iter().all(Option::is_some) {
                    self.start(publisher);
                }
            }
            Out::Frames(frames) => {
                self.queues[i].extend(frames);
                self.release();
            }
            Out::Dropped(n) => {
                if let Some(s) = &self.stream {
                    s.stats().frames_in_error.fetch_add(n, Ordering::Relaxed);
                }
            }
            Out::Absolute(anchors) => {
                if self.absolute {
                    self.pending
                        .extend(anchors.into_iter().map(|(t, pts, at)| (i, t, pts, at)));
                    self.set_absolute();
                }
            }
        }
    }

    fn start(&mut self, publisher: &mut Publisher) {
        let mut tracks = Vec::new();
        self.ids.clear();
        self.clock.clear();
        let has_audio = |d: &StreamDesc| d.tracks.iter().any(|t| !t.codec().is_video());
        for (i, d) in self.descs.iter().enumerate() {
            let Some(d) = d else { continue };
            if i > 0 && self.descs[0].as_ref().is_some_and(has_audio) {
                tracing::info!(
                    "[HLS source] the variant carries audio: its audio rendition is not used"
                );
                continue;
            }
            for t in &d.tracks {
                let id = tracks.len() as TrackId;
                self.ids.insert((i, t.id), id);
                self.clock.insert((i, t.id), t.clock_rate.max(1));
                tracks.push(Track { id, ..t.clone() });
            }
        }
        let desc = StreamDesc { tracks };
        tracing::info!(tracks = ?desc.codec_names(), "[HLS source] publishing");
        self.stream = Some(publisher.start(desc));
        self.set_absolute();
        self.release();
    }

    /// Writes the queued frames in decode order while every playlist has some queued (or one
    /// holds more than the bound).
    fn release(&mut self) {
        let Some(stream) = self.stream.clone() else {
            // Not started: hold, within the bound.
            for q in &mut self.queues {
                while q.len() > MERGE_BOUND {
                    q.pop_front();
                }
            }
            return;
        };
        loop {
            let full = self.queues.iter().any(|q| q.len() > MERGE_BOUND);
            if !full && self.queues.iter().any(VecDeque::is_empty) {
                return;
            }
            let mut pick: Option<(usize, f64)> = None;
            for (i, q) in self.queues.iter().enumerate() {
                let Some(f) = q.front() else { continue };
                let rate = self.clock.get(&(i, f.track)).copied().unwrap_or(90_000);
                let t = f.dts as f64 / f64::from(rate);
                if pick.is_none_or(|(_, b)| t < b) {
                    pick = Some((i, t));
                }
            }
            let Some((i, _)) = pick else { return };
            let Some(mut f) = self.queues[i].pop_front() else {
                return;
            };
            if let Some(id) = self.ids.get(&(i, f.track)) {
                f.track = *id;
                stream.write(f);
            }
        }
    }
}

impl Follower {
    fn new(
        client: Client,
        media_url: url::Url,
        playlist: MediaPlaylist,
        what: &'static str,
    ) -> Follower {
        Follower {
            client,
            media_url,
            playlist,
            demux: Demux::None,
            what,
        }
    }

    /// Follows the playlist until an error (which it returns).
    async fn follow(
        mut self,
        i: usize,
        tx: &tokio::sync::mpsc::Sender<(usize, Result<Out, String>)>,
        status: &RelayStatus,
    ) -> String {
        let Some(mut at) = self.playlist.start() else {
            return format!("the {} has no segment yet", self.what);
        };
        loop {
            let r: Result<(), String> = async {
                match step(&self.playlist, at) {
                    Step::Fetch { uri, map, next } => {
                        if !uri.is_empty() {
                            let u = self
                                .media_url
                                .join(&uri)
                                .map_err(|e| format!("URI {uri}: {e}"))?;
                            let data = self.client.get(&u, MAX_MEDIA, REQUEST_TIMEOUT).await?;
                            status.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                            // A segment's start (whole, or its first part) has its date.
                            let pdt = if at.part.unwrap_or(0) == 0 {
                                self.playlist.pdt(at.msn)
                            } else {
                                None
                            };
                            let mut outs = self.feed(map, data).await?;
                            if let Some(pdt) = pdt {
                                let mut firsts: Vec<(TrackId, i64, SystemTime)> = Vec::new();
                                for f in outs.iter().filter_map(|o| match o {
                                    Out::Frames(f) => Some(f),
                                    _ => None,
                                }).flatten() {
                                    if !firsts.iter().any(|(t, _, _)| *t == f.track) {
                                        firsts.push((f.track, f.pts, pdt));
                                    }
                                }
                                outs.insert(0, Out::Absolute(firsts));
                            }
                            for out in outs {
                                tx.send((i, Ok(out)))
                                    .await
                                    .map_err(|_| "the path closed".to_string())?;
                            }
                        }
                        at = next;
                    }
                    Step::Wait => {
                        if self.playlist.endlist {
                            return Err(format!("the {} ended", self.what));
                        }
                        let (reload, wait) = if self.playlist.can_block_reload {
                            let part = at
                                .part
                                .map(|p| format!("&_HLS_part={p}"))
                                .unwrap_or_default();
                            let mut u = self.media_url.clone();
                            let q = match self.media_url.query() {
                                Some(q) => format!("{q}&_HLS_msn={}{part}", at.msn),
                                None => format!("_HLS_msn={}{part}", at.msn),
                            };
                            u.set_query(Some(&q));
                            (
                                u,
                                REQUEST_TIMEOUT + secs(self.playlist.target_duration * 3.0),
                            )
                        } else {
                            tokio::time::sleep(
                                secs(self.playlist.target_duration / 2.0)
                                    .clamp(Duration::from_millis(100), Duration::from_secs(5)),
                            )
                            .await;
                            (self.media_url.clone(), REQUEST_TIMEOUT)
                        };
                        self.playlist =
                            media(&fetch_text(&mut self.client, &reload, wait).await?)?;
                    }
                    Step::Behind => {
                        let from = at;
                        at = self
                            .playlist
                            .start()
                            .ok_or(format!("the {} has no segment", self.what))?;
                        status.drops.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(what = self.what, ?from, to = ?at, "[HLS source] fell behind the playlist: on from its end");
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                return e;
            }
        }
    }

    /// Demuxes one segment or part.
    async fn feed(&mut self, map: Option<String>, data: Bytes) -> Result<Vec<Out>, String> {
        let mut outs = Vec::new();
        match map {
            None => {
                if !matches!(self.demux, Demux::Ts { .. }) {
                    if !matches!(self.demux, Demux::None) {
                        return Err("the source changed from fMP4 to MPEG-TS".into());
                    }
                    self.demux = Demux::Ts {
                        demux: Box::default(),
                        frames: Box::default(),
                        dropped: 0,
                    };
                }
                let Demux::Ts {
                    demux,
                    frames,
                    dropped,
                } = &mut self.demux
                else {
                    unreachable!()
                };
                demux.feed(&data);
                let now = demux.stats().dropped_pes;
                if now != *dropped {
                    outs.push(Out::Dropped(now - *dropped));
                    *dropped = now;
                }
                let mut batch = Vec::new();
                while let Some(ev) = demux.poll_event() {
                    for out in frames.on_event(ev) {
                        match out {
                            Output::Tracks(desc) => {
                                if !frames.ignored.is_empty() {
                                    tracing::info!(
                                        streams = ?frames.ignored,
                                        "[HLS source] MPEG-TS streams not carried (unsupported in this build)"
                                    );
                                }
                                if !batch.is_empty() {
                                    outs.push(Out::Frames(std::mem::take(&mut batch)));
                                }
                                outs.push(Out::Tracks(desc));
                            }
                            Output::Frame(f) => batch.push(f),
                        }
                    }
                }
                if !batch.is_empty() {
                    outs.push(Out::Frames(batch));
                }
            }
            Some(map) => {
                let current = match &self.demux {
                    Demux::Fmp4 { map: m, .. } => Some(m.clone()),
                    Demux::None => None,
                    Demux::Ts { .. } => {
                        return Err("the source changed from MPEG-TS to fMP4".into())
                    }
                };
                if current.as_deref() != Some(map.as_str()) {
                    let u = self
                        .media_url
                        .join(&map)
                        .map_err(|e| format!("map URI {map}: {e}"))?;
                    let init = self.client.get(&u, MAX_PLAYLIST, REQUEST_TIMEOUT).await?;
                    let tracks = parse_init(&init).map_err(|e| format!("init section: {e}"))?;
                    let desc: StreamDesc = stream_desc(&tracks);
                    if desc.tracks.is_empty() {
                        return Err(format!("no track of the {} can be carried", self.what));
                    }
                    match &self.demux {
                        Demux::Fmp4 { desc: d, .. } if *d != desc => {
                            return Err("the source's tracks changed".into())
                        }
                        Demux::Fmp4 { .. } => {}
                        _ => {
                            for t in tracks.iter().filter(|t| t.track.is_none()) {
                                tracing::info!(
                                    track = t.id,
                                    entry = %String::from_utf8_lossy(&t.entry),
                                    "[HLS source] track not carried (its codec is not read)"
                                );
                            }
                            outs.push(Out::Tracks(desc.clone()));
                        }
                    }
                    self.demux = Demux::Fmp4 { map, tracks, desc };
                }
                let Demux::Fmp4 { tracks, .. } = &self.demux else {
                    unreachable!()
                };
                let frames =
                    fragment_frames(tracks, &data).map_err(|e| format!("fragment: {e}"))?;
                outs.push(Out::Frames(frames));
            }
        }
        Ok(outs)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 3600.0))
}

async fn fetch_text(client: &mut Client, url: &url::Url, wait: Duration) -> Result<String, String> {
    let b = client.get(url, MAX_PLAYLIST, wait).await?;
    String::from_utf8(b.to_vec()).map_err(|_| format!("{url}: the playlist is not UTF-8"))
}
