// Plays Tidegate's built-in DASH player page in headless Chromium and reports what dash.js saw.
// Usage: node dash_player.mjs PAGE_URL SECONDS NODE_MODULES_DIR
// The page must work with no Internet access: every request for a host other than loopback
// is aborted and listed in `external` (the test fails on any). Prints one JSON object.
import { launch, loopbackOnly } from './browser.mjs';

const [url, secondsArg, modules] = process.argv.slice(2);
const seconds = Number(secondsArg || 8);
const browser = await launch(modules);
const out = { url, samples: [], external: [], trace: [] };
try {
  const page = await browser.newPage();
  await loopbackOnly(page, out.external);
  const t0 = Date.now();
  await page.goto(url, { timeout: 15000 });
  const end = t0 + seconds * 1000;
  while (Date.now() < end) {
    await page.waitForTimeout(250);
    const s = await page.evaluate(() => {
      const t = window.tidegate;
      if (!t || !t.dash) return null;
      const q = t.video.getVideoPlaybackQuality();
      const p = t.dash;
      let latency = null;
      try { latency = p.getCurrentLiveLatency(); } catch (e) { /* not live yet */ }
      let audio = null;
      let video = null;
      let lowLatency = null;
      try {
        const a = p.getCurrentTrackFor('audio');
        audio = a ? a.codec : null;
        const v = p.getCurrentTrackFor('video');
        video = v ? v.codec : null;
        lowLatency = p.getLowLatencyModeEnabled ? p.getLowLatencyModeEnabled() : null;
      } catch (e) { /* not ready */ }
      return {
        frames: q.totalVideoFrames, dropped: q.droppedVideoFrames, time: t.video.currentTime,
        latency, width: t.video.videoWidth, height: t.video.videoHeight, audio, video,
        lowLatency, errors: t.errors.slice(0, 10), dashjs: p.getVersion(),
      };
    });
    if (s) {
      s.t = (Date.now() - t0) / 1000;
      out.samples.push(s);
      out.trace.push([s.t, s.frames, s.time]);
      if (out.firstFrameAt === undefined && s.frames > 0) out.firstFrameAt = s.t;
    }
  }
  const last = out.samples[out.samples.length - 1] || {};
  Object.assign(out, {
    framesDecoded: last.frames || 0, dropped: last.dropped, width: last.width, height: last.height,
    audio: last.audio, video: last.video, lowLatency: last.lowLatency, errors: last.errors,
    dashjs: last.dashjs, currentTime: last.time,
  });
  // Latency once playing: the samples of the last half of the run.
  const lat = out.samples.filter((s) => s.frames > 0 && s.t > seconds / 2 && Number.isFinite(s.latency))
    .map((s) => s.latency).sort((a, b) => a - b);
  out.latencyMedian = lat.length ? lat[Math.floor(lat.length / 2)] : null;
  out.latencyMax = lat.length ? lat[lat.length - 1] : null;
} finally {
  await browser.close();
}
out.samples = out.samples.length;
console.log(JSON.stringify(out));
