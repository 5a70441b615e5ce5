//! The LL-HLS floor (`tidegate-bench __hls_floor <port> <playlist bytes> <part bytes>`): the
//! least a server built on the same runtime pays for the `hls-readers` load. It keeps no
//! media: a part is "cut" every 200 ms by a timer, and every answer is made once and written
//! whole: a playlist per part (the same tags the load client reads, padded to the size that
//! Tidegate's playlists had in the same run) and one part answer (of the size Tidegate's parts
//! had). A blocking reload waits for its part on a watch channel. Requests are read with one
//! buffer per connection and parsed only as far as the target: no headers, no routing, no
//! authentication, no sessions, no counters.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parts per segment (1 s segments of 200 ms parts).
const PARTS: u64 = 5;

pub fn main(port: u16, playlist_bytes: usize, part_bytes: usize) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let code = match rt {
        Ok(rt) => match rt.block_on(serve(port, playlist_bytes, part_bytes)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("hls floor: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("hls floor: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// The answers of one part: the playlist that lists it and names the next one.
struct Answers {
    /// (msn, part) of the newest complete part.
    at: (u64, u64),
    playlist: Bytes,
}

fn answer(content_type: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 160);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out.freeze()
}

fn playlist(at: (u64, u64), size: usize) -> Bytes {
    let (msn, part) = at;
    let mut s = String::from(
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n#EXT-X-PART-INF:PART-TARGET=0.2\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.6\n",
    );
    s.push_str(&format!(
        "#EXT-X-MEDIA-SEQUENCE:{}\n",
        msn.saturating_sub(3)
    ));
    for m in msn.saturating_sub(3)..=msn {
        let last = if m == msn { part } else { PARTS - 1 };
        for p in 0..=last {
            s.push_str(&format!(
                "#EXT-X-PART:DURATION=0.2,URI=\"floor_part{m}_{p}.mp4\"\n"
            ));
        }
        if m < msn {
            s.push_str(&format!("#EXTINF:1.0,\nfloor_seg{m}.mp4\n"));
        }
    }
    let next = if part + 1 == PARTS {
        (msn + 1, 0)
    } else {
        (msn, part + 1)
    };
    let hint = format!(
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"floor_part{}_{}.mp4\"\n",
        next.0, next.1
    );
    // Padded (a comment) to the size of the server's playlists in the same run.
    let pad = size.saturating_sub(s.len() + hint.len() + 2);
    if pad > 0 {
        s.push('#');
        s.push_str(&"x".repeat(pad));
        s.push('\n');
    }
    s.push_str(&hint);
    answer("application/vnd.apple.mpegurl", s.as_bytes())
}

async fn serve(port: u16, playlist_bytes: usize, part_bytes: usize) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let part = answer("video/mp4", &vec![0x5a; part_bytes]);
    let first = (3, 0);
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Answers {
        at: first,
        playlist: playlist(first, playlist_bytes),
    }));
    tokio::spawn(async move {
        let mut at = first;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.tick().await;
        loop {
            tick.tick().await;
            at = if at.1 + 1 == PARTS {
                (at.0 + 1, 0)
            } else {
                (at.0, at.1 + 1)
            };
            let _ = tx.send(Arc::new(Answers {
                at,
                playlist: playlist(at, playlist_bytes),
            }));
        }
    });
    loop {
        let (s, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        tokio::spawn(connection(s, rx.clone(), part.clone()));
    }
}

/// `_HLS_msn` and `_HLS_part` of a playlist request's target.
fn wanted(target: &str) -> Option<(u64, u64)> {
    let q = target.split_once('?')?.1;
    let mut msn = None;
    let mut part = None;
    for kv in q.split('&') {
        match kv.split_once('=') {
            Some(("_HLS_msn", v)) => msn = v.parse().ok(),
            Some(("_HLS_part", v)) => part = v.parse().ok(),
            _ => {}
        }
    }
    Some((msn?, part.unwrap_or(0)))
}

async fn connection(
    mut s: tokio::net::TcpStream,
    mut rx: tokio::sync::watch::Receiver<Arc<Answers>>,
    part: Bytes,
) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 << 10 {
                return;
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = buf.split_to(end);
        let line = head[..].split(|b| *b == b'\r').next().unwrap_or(&[]);
        let target = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("");
        let out = if target.contains(".m3u8") {
            if let Some(want) = wanted(target) {
                // Blocking reload: until that part is listed (bounded, as a server would).
                let _ = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|a| a.at >= want))
                    .await;
            }
            rx.borrow().playlist.clone()
        } else {
            part.clone()
        };
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}
