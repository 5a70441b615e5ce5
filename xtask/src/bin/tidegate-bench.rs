//! Release-mode benchmarks behind `cargo xtask bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidegate_core::{CodecParams, Frame, Stream, StreamConfig, StreamDesc, Track};

/// One publisher, `readers` reader tasks; the publisher writes `frames` frames of `size`
/// bytes at full speed. Returns (seconds, frames delivered, reader skips).
async fn fanout(readers: usize, frames: u64, size: usize) -> (f64, u64, u64) {
    let desc = StreamDesc {
        tracks: vec![Track {
            id: 0,
            params: CodecParams::H264 {
                sps: Bytes::from_static(b"\x67"),
                pps: Bytes::from_static(b"\x68"),
            },
            clock_rate: 90_000,
        }],
    };
    let stream = Arc::new(Stream::new(desc, StreamConfig::default()));
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let mut r = stream.subscribe();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while r.recv().await.is_ok() {
                n += 1;
            }
            (n, r.skips())
        }));
    }
    let payload = Bytes::from(vec![0u8; size]);
    let start = Instant::now();
    for i in 0..frames {
        stream.write(Frame {
            track: 0,
            pts: i as i64 * 3000,
            dts: i as i64 * 3000,
            keyframe: i % 30 == 0,
            data: payload.clone(),
            received: Instant::now(),
            params: None,
        });
        if i % 32 == 0 {
            tokio::task::yield_now().await;
        }
    }
    stream.close();
    let (mut delivered, mut skips) = (0, 0);
    for t in tasks {
        if let Ok((n, s)) = t.await {
            delivered += n;
            skips += s;
        }
    }
    (start.elapsed().as_secs_f64(), delivered, skips)
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    println!("core fan-out (one stream, frames of 5 kB, written at full speed; in-process)");
    println!(
        "{:>8} {:>10} {:>16} {:>14} {:>8}",
        "readers", "frames", "deliveries/s", "ns/delivery", "skips"
    );
    for readers in [1usize, 100, 1000] {
        let frames = 20_000;
        let (secs, delivered, skips) = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(120), fanout(readers, frames, 5000)).await
            })
            .unwrap_or((f64::NAN, 0, 0));
        println!(
            "{readers:>8} {frames:>10} {:>16.0} {:>14.1} {skips:>8}",
            delivered as f64 / secs,
            secs * 1e9 / delivered.max(1) as f64
        );
    }
}
