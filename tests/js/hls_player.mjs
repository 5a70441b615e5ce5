// Plays Tidegate's built-in HLS player page in headless Chromium and reports what hls.js saw.
// Usage: node hls_player.mjs PAGE_URL SECONDS [--audio] NODE_MODULES_DIR
// --audio: the page's video is unmuted and an AnalyserNode listens to it: the report has the
// audio bytes Chromium decoded, the loudest level heard (dBFS) and the spectral peak (Hz).
// The page must work with no Internet access: every request for a host other than loopback
// is aborted and listed in `external` (the test fails on any). Prints one JSON object.
import { launch, loopbackOnly } from './browser.mjs';

const argv = process.argv.slice(2);
const audio = argv.includes('--audio');
const [url, secondsArg, modules] = argv.filter((a) => a !== '--audio');
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
    const s = await page.evaluate((audio) => {
      const t = window.tidegate;
      if (!t || !t.hls) return null;
      let heard = null;
      if (audio) {
        if (!window.tgAudio && t.video.readyState >= 2) {
          const ctx = new AudioContext();
          const an = ctx.createAnalyser();
          an.fftSize = 8192;
          ctx.createMediaElementSource(t.video).connect(an);
          an.connect(ctx.destination);
          t.video.muted = false;
          window.tgAudio = { ctx, an, loudest: -Infinity, spectrum: null };
        }
        const a = window.tgAudio;
        if (a) {
          const td = new Float32Array(a.an.fftSize);
          a.an.getFloatTimeDomainData(td);
          const rms = Math.sqrt(td.reduce((x, v) => x + v * v, 0) / td.length);
          const db = 20 * Math.log10(rms + 1e-9);
          if (db > a.loudest) {
            a.loudest = db;
            const f = new Float32Array(a.an.frequencyBinCount);
            a.an.getFloatFrequencyData(f);
            let peak = 1;
            for (let i = 2; i < f.length; i++) if (f[i] > f[peak]) peak = i;
            a.peakHz = peak * a.ctx.sampleRate / a.an.fftSize;
          }
          heard = { bytes: t.video.webkitAudioDecodedByteCount, loudestDb: a.loudest,
            peakHz: a.peakHz, state: a.ctx.state };
        }
      }
      const q = t.video.getVideoPlaybackQuality();
      const lvl = t.hls.levels && t.hls.levels[t.hls.currentLevel];
      const det = lvl && lvl.details;
      return {
        frames: q.totalVideoFrames, dropped: q.droppedVideoFrames, time: t.video.currentTime,
        latency: t.hls.latency, width: t.video.videoWidth, height: t.video.videoHeight,
        partTarget: det ? det.partTarget : null, canBlockReload: det ? det.canBlockReload : null,
        errors: t.errors.slice(0, 10), hlsjs: window.Hls && Hls.version, heard,
      };
    }, audio);
    if (s) {
      s.t = (Date.now() - t0) / 1000;
      out.samples.push(s);
      out.trace.push([s.t, s.frames, s.time, s.width]);
      if (out.firstFrameAt === undefined && s.frames > 0) out.firstFrameAt = s.t;
    }
  }
  const last = out.samples[out.samples.length - 1] || {};
  Object.assign(out, {
    framesDecoded: last.frames || 0, dropped: last.dropped, width: last.width, height: last.height,
    partTarget: last.partTarget, canBlockReload: last.canBlockReload, errors: last.errors,
    hlsjs: last.hlsjs, currentTime: last.time, heard: last.heard,
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
