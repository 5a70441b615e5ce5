"""WHIP publisher and WHEP viewers for Tidegate's tests, on aiortc.

    python webrtc_peer.py whip URL --seconds 10 [--codec H264|VP8] [--audio] [--audio-codec PCMU]
                               [--size 640x360] [--flash (a flash + beep pattern, with --audio)]
                               [--fps 30] [--user U --pass P | --token T]
    python webrtc_peer.py whep URL --seconds 5 [--viewers N] [--user U --pass P | --token T]
                               [--analyse (a flash + beep pattern: skew, spectrum)]
                               [--via HOST:PORT (a UDP relay in front of the server)]

Prints one JSON object on stdout. Exit status: 0 when media flowed, 1 when it did not, 2 on an
HTTP or negotiation error (the JSON then has "status" and "error").

Loopback only: aiortc is given no ICE servers (it would use Google's STUN) and aioice is told
that 127.0.0.1 is the only host address (it skips loopback otherwise).
"""
import argparse
import array
import asyncio
import base64
import fractions
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import aioice.ice
import av
from aiortc import (RTCConfiguration, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription, VideoStreamTrack)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


class Refused(Exception):
    def __init__(self, status, error):
        super().__init__(f"HTTP {status}: {error}")
        self.status, self.error = status, error


def auth_headers(args):
    if args.token:
        return {"Authorization": f"Bearer {args.token}"}
    if args.user is not None:
        raw = f"{args.user}:{args.password or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    return {}


def http(method, url, body=None, headers=None, timeout=10.0):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            # resp.headers is case-insensitive (hyper sends lower-case names).
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def via(sdp, addr):
    """Points the answer's UDP host candidates at `addr` (a relay in front of the server)."""
    host, port = addr.rsplit(":", 1)
    out = []
    for line in sdp.splitlines():
        parts = line.split()
        if line.startswith("a=candidate:") and len(parts) > 7 and parts[2].lower() == "udp":
            parts[4], parts[5] = host, port
            line = " ".join(parts)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


async def negotiate(pc, url, args):
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", **auth_headers(args)}
    status, h, body = await asyncio.to_thread(
        http, "POST", url, pc.localDescription.sdp.encode(), headers)
    if status != 201:
        try:
            err = json.loads(body).get("error", "")
        except ValueError:
            err = body[:300].decode(errors="replace")
        raise Refused(status, err)
    if not h.get("Content-Type", "").startswith("application/sdp"):
        raise Refused(status, f"answer Content-Type is {h.get('Content-Type')!r}")
    location = h.get("Location")
    if not location:
        raise Refused(status, "no Location header")
    answer = body.decode()
    if getattr(args, "via", None):
        answer = via(answer, args.via)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return urllib.parse.urljoin(url, location), h.get("ETag")


async def delete(resource, args):
    if resource:
        status, _, _ = await asyncio.to_thread(http, "DELETE", resource, None, auth_headers(args), 5.0)
        return status
    return None


class Clock:
    """The start both tracks of a publish count from (set by whichever is asked first)."""

    def __init__(self):
        self.t0 = None

    def start(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        return self.t0


class Pattern(VideoStreamTrack):
    """A moving bar, paced in real time (no numpy needed); with `flash`, black with the first
    100 ms of every second white instead."""

    def __init__(self, width, height, fps, clock, flash=False):
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.count = 0
        self.clock, self.flash = clock, flash

    async def recv(self):
        t0 = self.clock.start()
        delay = t0 + self.count / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        y = frame.planes[0]
        if self.flash:
            lit = (self.count % self.fps) < self.fps / 10
            row = bytearray([235 if lit else 16] * y.line_size)
        else:
            row = bytearray([16 + (self.count % 200)] * y.line_size)
            bar = (self.count * 8) % max(1, self.width - 32)
            row[bar:bar + 32] = b"\xeb" * 32
        y.update(bytes(row) * self.height)
        for p in frame.planes[1:]:
            p.update(bytes([128]) * (p.line_size * (self.height // 2)))
        frame.pts = int(self.count * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


class Beep(MediaStreamTrack):
    """48 kHz mono in 20 ms frames, paced in real time from the publish's clock: a 1 kHz beep
    in the first 100 ms of every second, silence otherwise."""

    kind = "audio"

    def __init__(self, clock):
        super().__init__()
        self.clock, self.n = clock, 0

    async def recv(self):
        t0 = self.clock.start()
        delay = t0 + self.n / 48000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        samples = array.array("h", (
            int(16000 * math.sin(2 * math.pi * 1000 * s / 48000)) if s % 48000 < 4800 else 0
            for s in range(self.n, self.n + 960)))
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = 48000
        frame.pts = self.n
        frame.time_base = fractions.Fraction(1, 48000)
        self.n += 960
        return frame


def only_codec(transceiver, kind, codec):
    caps = RTCRtpSender.getCapabilities(kind).codecs
    want = [c for c in caps if c.mimeType.lower() == f"{kind}/{codec}".lower()]
    if want:
        transceiver.setCodecPreferences(want)


async def whip(args):
    w, h = (int(v) for v in args.size.split("x"))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    clock = Clock()
    video = Pattern(w, h, args.fps, clock, args.flash)
    t = pc.addTransceiver(video, direction="sendonly")
    only_codec(t, "video", args.codec)
    if args.audio or args.audio_codec:
        track = Beep(clock) if args.flash else AudioStreamTrack()
        a = pc.addTransceiver(track, direction="sendonly")
        if args.audio_codec:
            only_codec(a, "audio", args.audio_codec)
    states = []
    pc.on("connectionstatechange", lambda: states.append(pc.connectionState))
    out = {"role": "whip"}
    try:
        resource, etag = await negotiate(pc, args.url, args)
        out.update(resource=resource, etag=etag)
        deadline = time.monotonic() + 10
        while pc.connectionState != "connected" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        out["connected"] = pc.connectionState == "connected"
        start = video.count
        await asyncio.sleep(args.seconds)
        out["frames_sent"] = video.count - start
        out["delete_status"] = await delete(resource, args)
    except Refused as e:
        out.update(status=e.status, error=e.error)
        await pc.close()
        print(json.dumps(out))
        return 2
    finally:
        out["states"] = states
    await pc.close()
    print(json.dumps(out))
    return 0 if out.get("connected") and out.get("frames_sent", 0) > 0 else 1


async def consume(track, stats, kind, deadline):
    while time.monotonic() < deadline:
        try:
            frame = await asyncio.wait_for(track.recv(), max(0.01, deadline - time.monotonic()))
        except (asyncio.TimeoutError, MediaStreamError):
            return
        now = time.monotonic()
        if kind == "video":
            stats["frames"] += 1
            stats["width"], stats["height"] = frame.width, frame.height
            stats["pts"].append(frame.pts)
            stats.setdefault("first_frame_at", now)
            if "analysis" in stats:
                # Mean luma of a sample of the picture (a flash test pattern: black or white).
                y = bytes(frame.planes[0])[::61]
                stats["analysis"]["video"].append((frame.pts / 90000, sum(y) / max(1, len(y))))
        else:
            stats["audio_frames"] += 1
            if "analysis" in stats and frame.pts is not None:
                # s16 interleaved: keep the first channel.
                ch = len(frame.layout.channels)
                # The plane may be padded past its samples.
                pcm = array.array("h", bytes(frame.planes[0]))[:frame.samples * ch]
                stats["analysis"]["audio"].append(
                    (frame.pts, frame.sample_rate, ch, pcm[::ch]))


def goertzel(samples, rate, freq):
    w = 2 * math.pi * freq / rate
    c = 2 * math.cos(w)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + c * s1 - s2, s1
    return s1 * s1 + s2 * s2 - c * s1 * s2


def rtp_origins(pc):
    """Each receiver's first RTP timestamp: aiortc counts frames' pts from it, and the skew
    needs the sender's own times (Tidegate stamps audio and video from one clock)."""
    out = {}
    for r in pc.getReceivers():
        mapper = getattr(r, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        if r.track is not None and origin is not None:
            out[r.track.kind] = origin
    return out


def analyse(a):
    """Flash + beep test pattern: flash onsets (video timestamps), beep onsets (audio
    timestamps, to the sample), their skew, and the beeps' spectral peak."""
    out = {}
    origins = a.get("origins", {})
    vo, ao = origins.get("video", 0), origins.get("audio", 0)
    out["rtp_origins"] = origins
    video = sorted((t + vo / 90000, luma) for t, luma in a["video"])
    flashes = [t for (t0, l0), (t, l) in zip(video, video[1:]) if l0 < 100 <= l]
    audio = sorted(a["audio"], key=lambda x: x[0])
    out["audio_channels"] = audio[0][2] if audio else 0
    out["audio_rate"] = audio[0][1] if audio else 0
    # A beep starts at a sample above the noise after at least 50 ms without one.
    beeps, last_loud, peak_abs = [], None, 0
    for pts, rate, _, pcm in audio:
        for i, x in enumerate(pcm):
            ax = abs(x)
            peak_abs = max(peak_abs, ax)
            t = ao + pts + i
            if last_loud is None:
                last_loud = t if ax > 1000 else t - rate
            elif ax > 1000:
                if t - last_loud >= rate // 20:
                    beeps.append(t / rate)
                last_loud = t
    out["audio_peak_amplitude"] = peak_abs / 32768
    # One beep's samples (10 to 90 ms after an onset in the middle) for the spectrum.
    if beeps:
        t0 = beeps[len(beeps) // 2]
        seg = []
        for pts, rate, _, pcm in audio:
            for i, x in enumerate(pcm):
                t = (ao + pts + i) / rate
                if t0 + 0.01 <= t < t0 + 0.09:
                    seg.append(x)
        rate = audio[0][1]
        coarse = max(range(100, 8000, 20), key=lambda f: goertzel(seg, rate, f))
        fine = max((coarse + d / 2 for d in range(-40, 41)), key=lambda f: goertzel(seg, rate, f))
        out["beep_peak_hz"] = fine
    skews = []
    for f in flashes:
        near = min(beeps, key=lambda b: abs(b - f), default=None)
        if near is not None and abs(near - f) < 0.5:
            skews.append(round((near - f) * 1000, 1))
    out["flashes"], out["beeps"], out["skews_ms"] = len(flashes), len(beeps), skews
    return out


async def one_viewer(args, index, deadline_after):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    stats = {"frames": 0, "audio_frames": 0, "pts": [], "width": 0, "height": 0, "kinds": []}
    if args.analyse:
        stats["analysis"] = {"video": [], "audio": []}
    tasks = []
    started = time.monotonic()

    @pc.on("track")
    def on_track(track):
        stats["kinds"].append(track.kind)
        tasks.append(asyncio.ensure_future(
            consume(track, stats, track.kind, started + deadline_after)))

    try:
        resource, _ = await negotiate(pc, args.url, args)
    except Refused as e:
        await pc.close()
        return {"index": index, "status": e.status, "error": e.error}
    stats["answered_after"] = time.monotonic() - started
    while time.monotonic() < started + deadline_after:
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    if "analysis" in stats:
        stats["analysis"]["origins"] = rtp_origins(pc)
    await delete(resource, args)
    await pc.close()
    pts = stats.pop("pts")
    first = stats.pop("first_frame_at", None)
    stats["first_frame_after"] = None if first is None else first - started
    stats["unique_pts"] = len(set(pts))
    stats["pts_monotonic"] = all(b > a for a, b in zip(pts, pts[1:]))
    gaps = [b - a for a, b in zip(pts, pts[1:])]
    stats["largest_gap_s"] = round(max(gaps) / 90000, 3) if gaps else None
    span = (max(pts) - min(pts)) / 90000 if len(pts) > 1 else 0
    stats["pts_span_s"] = round(span, 3)
    if "analysis" in stats:
        stats["analysis"] = analyse(stats["analysis"])
    stats["index"] = index
    return stats


async def whep(args):
    viewers = await asyncio.gather(*(one_viewer(args, i, args.seconds) for i in range(args.viewers)))
    out = {"role": "whep", "viewers": viewers}
    print(json.dumps(out))
    if any("status" in v for v in viewers):
        return 2
    return 0 if all(v["frames"] > 0 for v in viewers) else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["whip", "whep"])
    ap.add_argument("url")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--codec", default="H264")
    ap.add_argument("--audio", action="store_true")
    ap.add_argument("--audio-codec", help="opus (default), PCMU or PCMA")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--flash", action="store_true",
                    help="publish a flash + beep pattern (black video white for 100 ms a second, "
                         "a 1 kHz beep meanwhile)")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--viewers", type=int, default=1)
    ap.add_argument("--analyse", action="store_true",
                    help="report a flash + beep test pattern's skew and the beeps' spectrum")
    ap.add_argument("--user")
    ap.add_argument("--pass", dest="password")
    ap.add_argument("--token")
    ap.add_argument("--via", help="HOST:PORT of a UDP relay to reach the server through")
    ap.add_argument("--ntp-offset", type=float, default=0.0,
                    help="seconds taken from the NTP clock aiortc puts in its RTCP sender "
                         "reports (a publisher whose clock is elsewhere: useAbsoluteTimestamp)")
    args = ap.parse_args()
    if args.ntp_offset:
        import aiortc.clock
        real = aiortc.clock.current_ntp_time
        shift = int(args.ntp_offset * (1 << 32))
        aiortc.clock.current_ntp_time = lambda: real() - shift
    run = whip if args.role == "whip" else whep
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
