#!/usr/bin/python3
"""An IP camera stand-in for the tests: an RTSP server (gst-rtsp-server, Debian's python3-gi)
serving rtsp://127.0.0.1:PORT/cam with live H.264 640x360@30 and AAC (or AC-3) 48 kHz (test patterns, or
with --pattern flash a flash + beep each second) (rtsps:// with
--cert and --key, as cameras with self-signed certificates do). Each client
connection and disconnection is printed to stderr ("client connected" / "client closed"),
so a test can count them, and so is each PLAY's Range and Scale ("PLAY Range: npt=2.000-").
With --file, it serves that MP4's H.264 track instead, seekable (an NVR's recording: a PLAY
with a Range starts there, and the stream ends with the file). It exits by itself after
--max-seconds.

Run with /usr/bin/python3 (not a venv python): python3-gi is a Debian package.
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtspServer  # noqa: E402


def say(line):
    print(line, file=sys.stderr, flush=True)


class OpenAuth(GstRtspServer.RTSPAuth):
    """TLS without access control: every client may read (tokens cannot be filled from
    Python, their structures are copies)."""

    def do_authenticate(self, _ctx):
        return True

    def do_check(self, ctx, check):
        # The connect check is where the server starts TLS on the connection.
        if check == "auth.check.connect":
            return GstRtspServer.RTSPAuth.do_check(self, ctx, check)
        return True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--max-seconds", type=int, default=120)
    p.add_argument("--cert", help="PEM certificate: serve RTSPS")
    p.add_argument("--key", help="PEM private key of --cert")
    p.add_argument(
        "--multicast",
        action="store_true",
        help="send RTP to multicast groups only (224.3.0.0-10, ports 5000-5010)",
    )
    p.add_argument("--audio", choices=["aac", "ac3"], default="aac",
                   help="the audio codec (AC-3: RFC 4184, GStreamer's rtpac3pay)")
    p.add_argument("--mpegts", action="store_true",
                   help="serve H.264 + AAC muxed in MPEG-TS, one MP2T RTP stream (RFC 2250)")
    p.add_argument("--file", help="serve this MP4's H.264 track, seekable, instead of live")
    p.add_argument("--pattern", choices=["test", "flash"], default="test",
                   help="flash: a flash + beep pattern (lip sync), else test patterns and a tone")
    a = p.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(a.address)
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    if a.pattern == "flash":
        # Flash + beep: the first 100 ms of every second white and a 1 kHz tone, else black
        # and silence (the probes below switch them), for lip-sync measurements.
        video = "videotestsrc name=vsrc is-live=true pattern=solid-color foreground-color=0xff000000"
        audio = "audiotestsrc name=asrc is-live=true freq=1000 volume=0 samplesperbuffer=480"
    else:
        video = "videotestsrc is-live=true"
        audio = "audiotestsrc is-live=true"
    if a.audio == "ac3":
        audio_enc = "avenc_ac3 bitrate=192000 ! rtpac3pay name=pay1 pt=97"
    else:
        audio_enc = "avenc_aac ! aacparse ! rtpmp4gpay name=pay1 pt=97"
    if a.file:
        factory.set_launch(
            f"( filesrc location={a.file} ! qtdemux name=d d.video_0 ! queue ! h264parse "
            "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
    elif a.mpegts:
        factory.set_launch(
            f"( {video} ! video/x-raw,width=640,height=360,framerate=30/1 "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse "
            "! mpegtsmux name=mux alignment=7 ! rtpmp2tpay name=pay0 pt=33 "
            f"{audio} ! audio/x-raw,rate=48000,channels=2 ! audioconvert "
            "! avenc_aac ! aacparse ! mux. )"
        )
    else:
        factory.set_launch(
            f"( {video} ! video/x-raw,width=640,height=360,framerate=30/1 "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 "
            "! rtph264pay name=pay0 pt=96 config-interval=-1 "
            f"{audio} ! audio/x-raw,rate=48000,channels=2 ! audioconvert "
            f"! {audio_enc} )"
        )

    def flash_probes(_factory, media):
        pipeline = media.get_element()
        # A probe sees buffer N; what it sets shapes buffer N+1 (live sources make each buffer
        # when it is due), so it decides from N+1's time.
        def switch(name, prop, period, on, off):
            def probe(_pad, info):
                buf = info.get_buffer()
                if buf is not None and buf.pts != Gst.CLOCK_TIME_NONE:
                    nxt = buf.pts + period
                    lit = nxt % Gst.SECOND < Gst.SECOND // 10
                    pipeline.get_by_name(name).set_property(prop, on if lit else off)
                return Gst.PadProbeReturn.OK
            pipeline.get_by_name(name).get_static_pad("src").add_probe(
                Gst.PadProbeType.BUFFER, probe)
        switch("vsrc", "foreground-color", Gst.SECOND // 30, 0xFFFFFFFF, 0xFF000000)
        switch("asrc", "volume", Gst.SECOND // 100, 0.8, 0.0)

    if a.pattern == "flash":
        factory.connect("media-configure", flash_probes)
    factory.set_shared(not a.file)
    scheme = "rtsp"
    if a.cert:
        # RTSPS: TLS on the same port.
        with open(a.cert) as c, open(a.key) as k:
            cert = Gio.TlsCertificate.new_from_pem(c.read() + k.read(), -1)
        auth = OpenAuth()
        auth.set_tls_certificate(cert)
        server.set_auth(auth)
        scheme = "rtsps"
    if a.multicast:
        gi.require_version("GstRtsp", "1.0")
        from gi.repository import GstRtsp

        pool = GstRtspServer.RTSPAddressPool()
        pool.add_range("224.3.0.0", "224.3.0.10", 5000, 5010, 16)
        factory.set_address_pool(pool)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP_MCAST)
    server.get_mount_points().add_factory("/cam", factory)

    gi.require_version("GstRtsp", "1.0")
    from gi.repository import GstRtsp

    def on_play(_client, ctx):
        for field, name in ((GstRtsp.RTSPHeaderField.RANGE, "Range"),
                            (GstRtsp.RTSPHeaderField.SCALE, "Scale")):
            res, value = ctx.request.get_header(field, 0)
            if res == GstRtsp.RTSPResult.OK:
                say(f"PLAY {name}: {value}")
        return GstRtsp.RTSPStatusCode.OK

    def on_client(_server, client):
        say("client connected")
        client.connect("closed", lambda _c: say("client closed"))
        client.connect("pre-play-request", on_play)

    server.connect("client-connected", on_client)
    if server.attach(None) == 0:
        sys.exit("cannot bind")
    say(f"listening on {scheme}://{a.address}:{a.port}/cam")
    loop = GLib.MainLoop()
    GLib.timeout_add_seconds(a.max_seconds, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
