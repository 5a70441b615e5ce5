// Drives Tidegate's built-in console in headless Chromium (playwright-core) and reports what
// it showed. Usage:
//   node console.mjs CONSOLE_URL USER PASS PATH SCREENSHOT NODE_MODULES_DIR
// With the credentials it waits (bounded) for PATH's row, its codecs, its readers and points
// in its bitrate plot, opens the HLS preview and counts the frames the preview's player
// decodes, and takes a screenshot. Without credentials it records the status the page gets.
// Every request for a host other than loopback is aborted and listed in `external`.
// Prints one JSON object.
import { launch, loopbackOnly } from './browser.mjs';

const [url, user, pass, streamPath, screenshot, modules] = process.argv.slice(2);
const browser = await launch(modules);
const out = { external: [], consoleErrors: [] };
const offline = (page) => loopbackOnly(page, out.external, out.consoleErrors);

// Polls `f` every 250 ms until it returns a truthy value or `ms` pass; returns the last value.
async function until(page, ms, f) {
  const end = Date.now() + ms;
  let v = null;
  while (Date.now() < end) {
    v = await f();
    if (v) return v;
    await page.waitForTimeout(250);
  }
  return v;
}

try {
  // Without credentials: refused.
  {
    const ctx = await browser.newContext();
    const r = await ctx.request.get(url, { timeout: 15000 });
    out.anonymousStatus = r.status();
    // The browser itself, with no credentials to give to the challenge, shows nothing.
    const page = await ctx.newPage();
    await offline(page);
    try {
      const p = await page.goto(url, { timeout: 15000 });
      out.anonymousPage = p ? p.status() : null;
    } catch (e) {
      out.anonymousPage = String(e.message || e).split('\n')[0];
    }
    await ctx.close();
  }
  // With them: the page and what it shows.
  const ctx = await browser.newContext({ httpCredentials: { username: user, password: pass } });
  const page = await ctx.newPage();
  await offline(page);
  const r = await page.goto(url, { timeout: 15000 });
  out.status = r ? r.status() : null;
  out.title = await page.title();
  const row = `#paths tr[data-path="${streamPath}"]`;
  const shown = await until(page, 30000, () => page.evaluate((sel) => {
    const tr = document.querySelector(sel);
    if (!tr) return null;
    const points = Number(tr.querySelector('td.inbound svg').dataset.points);
    const readers = [...tr.querySelectorAll('td.readers .tag')].map((t) => t.dataset.type);
    const res = {
      state: tr.querySelector('.state').textContent,
      source: tr.querySelector('td.source').textContent,
      codecs: [...tr.querySelectorAll('td.codecs .tag')].map((t) => t.textContent),
      readers,
      inboundPoints: points,
      inboundText: tr.querySelector('td.inbound .figure').textContent,
      previewButtons: [...tr.querySelectorAll('button')].map((b) => b.className),
    };
    return (points >= 3 && readers.length > 0) ? res : null;
  }, row));
  out.row = shown || await page.evaluate((sel) => {
    const tr = document.querySelector(sel);
    return tr ? { html: tr.innerHTML.slice(0, 2000) } : { html: document.body.innerHTML.slice(0, 2000) };
  }, row);
  out.latencyEgresses = await page.evaluate(() => [...document.querySelectorAll('#latency [data-egress]')]
    .map((d) => d.dataset.egress));
  out.keysText = await page.evaluate(() => document.getElementById('keys').textContent.slice(0, 500));

  // The preview: the HLS player in its frame, and the frames it decodes.
  const button = await page.$(`${row} button.preview-hls`);
  if (button) {
    await button.click();
    const t0 = Date.now();
    const frames = await until(page, 40000, async () => {
      const f = page.frames().find((fr) => fr !== page.mainFrame() && fr.url().includes('/' + streamPath + '/'));
      if (!f) return null;
      const n = await f.evaluate(() => {
        const t = window.tidegate;
        return t && t.video ? t.video.getVideoPlaybackQuality().totalVideoFrames : 0;
      }).catch(() => 0);
      out.previewFrames = n;
      return n >= 30 ? n : null;
    });
    out.previewFirstFramesAfter = (Date.now() - t0) / 1000;
    out.previewFrames = frames || out.previewFrames || 0;
    out.previewUrl = await page.$eval('#preview', (f) => f.src);
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  out.screenshot = screenshot;
  await ctx.close();
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
